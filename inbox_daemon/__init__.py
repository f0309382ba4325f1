"""inbox-daemon: partner catalog files in, exactly-once catalog changes out."""

__version__ = "0.1.0"
