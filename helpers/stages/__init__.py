"""The stage entry points the notebooks call (01 data .. 05 benchmark), and the launched worker's entry."""
