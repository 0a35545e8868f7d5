#!/usr/bin/env python3
"""Serve every multimsg endpoint on one port and run the drain on a timer.

    python local_runner.py [--host 127.0.0.1] [--port 8080] [--debug]
"""

from multimsg.runner import main

if __name__ == "__main__":
    main()
