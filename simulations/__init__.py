"""gpusched's what-if simulator: replays scenarios and public traces through the scheduling core."""
