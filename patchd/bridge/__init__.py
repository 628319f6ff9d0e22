"""The unprivileged HTTP bridge to a central platform (signed HTTP); not built yet."""
