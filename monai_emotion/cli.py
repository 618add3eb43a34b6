"""Command line: ``python -m monai_emotion <command>`` (built with fire)."""
import fire


def main() -> None:
    fire.Fire({})
