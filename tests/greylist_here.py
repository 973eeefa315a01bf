"""The ``greylist`` command as on a host whose /etc is the tests' own (``GREYLIST_TEST_ETC``).

Tests run the command line through this, never ``python -m greylist`` itself:
on a Courier host /etc/pythonfilter-modules.conf exists, and the command
would read it (see host.py).
"""

import os
import sys

import courier.config

etc = os.environ["GREYLIST_TEST_ETC"]
courier.config._standard_config_paths = [os.path.join(etc, "pythonfilter-modules.conf")]
courier.config.sysconfdir = os.path.join(etc, "courier")

from greylist.cli import main  # noqa: E402

sys.exit(main())
