"""The `kedge` command: the group that assembles the commands of each stage (kedge/commands/).

Heavy imports (TensorFlow above all) happen inside the commands that need them, so
`kedge --help` is instant and the lean runtime never loads TensorFlow. A KedgeError
becomes one line on stderr and exit status 1, never a traceback.
"""
from __future__ import annotations

from typing import Any

import click

import kedge
from kedge.commands import check, export, run, serve, train
from kedge.runtime.errors import KedgeError, safe_name


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KedgeError as err:
            click.echo(f"kedge: error: {' '.join(safe_name(str(err)).split())}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("kedge: interrupted", err=True)
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(kedge.__version__, prog_name="kedge")
def main() -> None:
    """kedge: knee X-ray osteoporosis classifiers, from training to the edge.

    \b
    Right away, with the two models shipped in kedge (lean install: pip install 'kedge[cpu]'):
      kedge infer knee.png scans/                    # osteoporosis probability + 3-class result
      kedge card                                     # the models' cards: data, metrics, limits
      kedge info                                     # this machine's backends and CPU features
    \b
    With the [explain] extra (matplotlib):
      kedge explain knee.png                         # what drove each answer (PNG maps)
    \b
    Your own model:
      kedge train knee-cnn --data DIR --out runs/cnn
      kedge export runs/cnn --int8 --calib DIR --calib-split train --data DIR --split test
      kedge infer scans/ --model runs/cnn --audit readings.jsonl
    \b
    A BUNDLE (or --model) is a bundle folder or a shipped model's name:
      kedge verify knee-cnn                          # `kedge info` shows where they are installed

    Research use only, not a diagnostic device.
    """


for stage in (train, export, run, check, serve):
    for command in stage.COMMANDS:
        main.add_command(command)

if __name__ == "__main__":
    main()
