"""Build the compiled scanning core (sensor/detect/_hscore.pyx) against Debian's libhs, and the
compiled EDM matcher (sensor/edm/_edmcore.pyx) against OpenSSL's libcrypto.

Everything else is declared in pyproject.toml. The extensions need a C compiler,
``libhyperscan-dev`` and ``libssl-dev`` (``make apt`` installs them). Both are optional: where one
cannot build, the package installs without it and the sensor runs the Python reference (scanner or
EDM matcher), warns once and says so in ``dlp_sensor_compiled_core`` / ``dlp_sensor_compiled_edm``
(CI fails tests/test_core_diff.py / tests/test_edm_compiled.py instead).
"""
from Cython.Build import cythonize
from setuptools import Extension, setup

setup(ext_modules=cythonize(
    [Extension("sensor.detect._hscore", ["sensor/detect/_hscore.pyx"], libraries=["hs"],
               extra_compile_args=["-O2"], optional=True),
     # SHA256_* (one struct copy per HMAC state) is deprecated in OpenSSL 3 but kept: EVP costs a fetch
     Extension("sensor.edm._edmcore", ["sensor/edm/_edmcore.pyx"], libraries=["crypto"],
               extra_compile_args=["-O2", "-Wno-deprecated-declarations"], optional=True)],
    compiler_directives={"language_level": "3"}, quiet=True))
