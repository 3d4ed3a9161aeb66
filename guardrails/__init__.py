"""Every guard guardrag runs: one file each, plain verdicts, policies from settings, audit."""
