"""Running the suite: the papermill runner, staleness checks, sweeps, notebook setup, the command line."""
