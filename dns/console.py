"""The console scripts. This module imports nothing heavy, so that Ctrl-C at any moment of a command's start, or
a reader that closes the pipe early (`dns-report runs | head`), ends it with one line instead of a traceback."""

from __future__ import annotations

import importlib
import os
import signal
import sys


def _command(program: str, function: str):
    def run() -> None:
        try:
            getattr(importlib.import_module("dns.cli"), function)()
            sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
        except KeyboardInterrupt:  # before (or after) a run's own handler, which saves a checkpoint, is in place
            print(f"{program}: interrupted" + (" before a checkpoint: run the same command again, with resume=true if "
                  "its run directory was made" if program == "dns-train" else ""), file=sys.stderr)
            sys.exit(128 + signal.SIGINT)
        except BrokenPipeError:  # the reader is gone; what was to be written is written (Python's advice)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(128 + signal.SIGPIPE)
    run.__name__ = function
    return run


train = _command("dns-train", "main")
evaluate = _command("dns-eval", "eval_main")
import_caffe = _command("dns-import-caffe", "import_caffe_main")
report = _command("dns-report", "report_main")
export = _command("dns-export", "export_main")
