"""Every figure and table a notebook shows, built from the run folder."""
