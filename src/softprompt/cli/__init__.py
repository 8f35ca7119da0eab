"""The ``softprompt`` command line: train, eval, predict, generate, inspect, convert, serve.

Each command is one function over the library; its signature and help texts are its ``--help``.

Examples:
    $ softprompt train --example                        # the built-in example on SmolLM2-135M-Instruct
    $ softprompt train configs/sst2.yaml --set train.lr=0.1
    $ softprompt eval runs/sst2 --split test
    $ softprompt generate runs/e2e "name[Aromi], eatType[pub]"
    $ softprompt predict runs/sst2 "a gripping, funny film"
    $ softprompt inspect runs/sst2/softprompt.safetensors
    $ softprompt convert runs/sst2 sst2-peft/           # to a peft folder (and back the other way)
    $ softprompt serve --model smollm2-135m-instruct --task sst2=runs/sst2   # OpenAI-compatible API
"""

from softprompt.cli import adapters, inference, serve, training  # noqa: F401  (each module registers its commands)
from softprompt.cli.common import app, example_config_path

__all__ = ["app", "example_config_path"]
