"""thumbview: predict how many views a YouTube thumbnail and title will get, and why."""

import logging

__version__ = "0.1.0"

# Library code logs; only the CLI and the web layer decide what people see.
logging.getLogger(__name__).addHandler(logging.NullHandler())
