"""The version of this package (one place: the package, the CLI and the X-Greylist header read it)."""

VERSION = "0.1.0"
