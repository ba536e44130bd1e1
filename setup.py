"""Build the compiled scanning core (sensor/detect/_hscore.pyx) against Debian's libhs.

Everything else is declared in pyproject.toml. The extension needs a C compiler and
``libhyperscan-dev`` (``make apt`` installs both). It is optional: where it cannot build, the
package installs without it and the sensor runs the Python reference scanner, warns once and says
so in ``dlp_sensor_compiled_core`` (CI fails tests/test_core_diff.py instead).
"""
from Cython.Build import cythonize
from setuptools import Extension, setup

setup(ext_modules=cythonize(
    [Extension("sensor.detect._hscore", ["sensor/detect/_hscore.pyx"], libraries=["hs"],
               extra_compile_args=["-O2"], optional=True)],
    compiler_directives={"language_level": "3"}, quiet=True))
