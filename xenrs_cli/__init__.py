"""xenrs: inspect the Xen vCPU runstate area in guest-memory dumps.

Nothing is imported here, so that ``xenrs --help`` and ``xenrs decode`` start fast.
"""

__version__ = "0.1.0"
