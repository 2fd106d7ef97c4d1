"""hbal-equivalent cluster balancing: text format, score, moves, planner, jobsets, live load."""
