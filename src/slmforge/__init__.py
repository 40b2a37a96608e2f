"""slmforge: a DVC pipeline that turns raw domain data into a measured, specialised small language model."""

__version__ = "0.1.0"
