"""The lab: the harness every benchmark shares (server processes on free ports, load generation, the machine
description, the results page and its figures, images). It imports neither wing."""
