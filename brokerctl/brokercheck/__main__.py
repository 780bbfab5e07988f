"""`python -m brokerctl.brokercheck [options]`: the check as the Job runs it, from the package."""

import sys

from brokerctl.brokercheck.cli import main

sys.exit(main())
