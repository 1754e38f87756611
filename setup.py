"""The one thing pyproject.toml cannot say stably: fsmount's C extension.

fsmount/_fastpath.c enters the mount's hot FUSE callbacks from C (~30% less CPU per
stat than through ctypes). Optional: without a C compiler or the libfuse 3 and Python
headers the install goes on and mfusepy's ctypes callbacks serve everything. (setuptools'
`[tool.setuptools.ext-modules]` table would do the same, but is still experimental.)
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("fsmount._fastpath", ["fsmount/_fastpath.c"], optional=True)])
