"""``edgewatch keys generate | sign``: Ed25519 keys for model manifests."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cloud import keys
from edge.cliutil import EXIT_OK, add_flag
from edge.contract import ConfigError
from edge.signing import key_id


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "keys", help="generate signing keys, sign a model folder",
        description="Ed25519 keys for model updates. `generate` writes NAME.key (private, mode 0600, stays on the "
                    "signing host) and NAME.pub (copy to each device's trusted-keys folder). `sign MODEL_DIR` signs "
                    "MODEL_DIR/manifest.json, which carries the sha256 of model.onnx.",
    )
    p.add_argument("action", choices=["generate", "sign"])
    p.add_argument("model_dir", nargs="?", help="for sign: the model folder (model.onnx + manifest.json)")
    add_flag(p, "--keys-dir", default="keys", env_prefix="KEYS_", help="folder for generate")
    add_flag(p, "--name", default="signing", env_prefix="KEYS_", help="key file name (without extension) for generate")
    add_flag(p, "--key", env_prefix="KEYS_", help="private key file for sign")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.action == "generate":
        private, public = keys.generate_keypair(Path(args.keys_dir), args.name)
        print(f"private key {private} (keep it on the signing host)\npublic key  {public} (copy to devices)")
        print(f"key id      {key_id(keys.load_private_key(private).public_key())}")
        return EXIT_OK
    if not args.model_dir or not args.key:
        raise ConfigError("keys sign needs MODEL_DIR and --key PRIVATE_KEY_FILE")
    signed = keys.sign_model_dir(Path(args.model_dir), keys.load_private_key(Path(args.key)))
    assert signed.signature is not None
    print(f"signed {signed.name} {signed.version} with key {signed.signature.key_id}")
    return EXIT_OK
