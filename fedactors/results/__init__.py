"""What a run leaves: its directory (outputs), reports, plots, the progress display and sweeps."""
