"""The end-of-run table a single run or a sweep prints (report.py)."""
