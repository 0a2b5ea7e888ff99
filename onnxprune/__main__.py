"""``python -m onnxprune``: the command line."""

from onnxprune.service.cli import main

if __name__ == "__main__":
    main()
