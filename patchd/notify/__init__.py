"""The desktop notification agent (user session, zh_CN and en); not built yet."""
