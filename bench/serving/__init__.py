"""The serving wing: experiments against real server processes (``serve``, ``photos``, ``precisions``,
``adapt``), each with its report, and what they share (``config``, ``inputs``, the baselines ``static_graph``,
``litserve_apps`` and ``equal_accuracy``). It imports the lab, never the suite; no experiment imports another."""
