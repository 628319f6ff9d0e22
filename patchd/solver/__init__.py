"""libsolv planning and the dependency-completeness check (deb and rpm pools).

Lands with the issue "Dependency completeness before commit"; the engine
already has the ``resolving`` state it will verify plans in.
"""
