"""Build the compiled scanning core (sensor/detect/_hscore.pyx) against Debian's libhs.

Everything else is declared in pyproject.toml. The extension needs ``libhyperscan-dev``
(``make apt`` installs it); the sensor still runs without it, on the Python reference scanner.
"""
from Cython.Build import cythonize
from setuptools import Extension, setup

setup(ext_modules=cythonize(
    [Extension("sensor.detect._hscore", ["sensor/detect/_hscore.pyx"], libraries=["hs"],
               extra_compile_args=["-O2"])],
    compiler_directives={"language_level": "3"}, quiet=True))
