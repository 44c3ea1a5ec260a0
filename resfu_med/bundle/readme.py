"""``docs/README.md`` and ``LICENSE`` of an exported bundle."""

from __future__ import annotations

from typing import Any

__all__ = ["render_readme", "render_license"]


def _table(rows: dict[str, Any]) -> str:
    if not rows:
        return "_none recorded_\n"
    lines = ["| name | value |", "| --- | --- |"]
    lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in rows.items()]
    return "\n".join(lines) + "\n"


def render_readme(metadata: dict[str, Any], config: dict[str, Any], network_def: dict[str, Any],
                  inference: dict[str, Any], checkpoint_info: dict[str, Any]) -> str:
    """The bundle's README: what the model does, inputs, outputs, label names, training and metrics."""
    fmt = metadata["network_data_format"]
    inp, out = fmt["inputs"]["image"], fmt["outputs"]["pred"]
    labels = "\n".join(f"| {i} | {name} |" for i, name in out["channel_def"].items())
    inferer = inference["inferer"]
    intensity = config.get("data", {}).get("intensity", {})
    train = {k: v for k, v in config.items() if k not in ("model", "data") and not isinstance(v, (dict, list))}
    train.update({f"{k}": v for k, v in config.get("train", {}).items() if not isinstance(v, (dict, list))}
                 if isinstance(config.get("train"), dict) else {})
    kwargs = {k: v for k, v in network_def.items() if k != "_target_"}
    return f"""# {metadata['name']}

{metadata['description']}

**Task:** {metadata['task']}. {metadata['intended_use']}

## Model

`{network_def['_target_']}` with arguments

```json
{_json(kwargs, None)}
```

The weights are `models/model.pt` (a state dict); `models/model.ts` is the TorchScript export when present.

## Input

One {inp['modality']} volume per NIfTI file (`.nii` / `.nii.gz`). Preprocessing (in `configs/inference.json`):
load, channel first, intensity `{_json(intensity, None)}` (the same transform the model was trained with), then
the volume is viewed as `(Z, Y, X)`. The network sees `{inp['num_channels']}`-channel float32 patches of
`{inp['spatial_shape']}` voxels, value range `{inp['value_range'] or 'unbounded'}`.

## Output

`<input name>_seg.nii.gz` in `output_dir`: uint8 labels with the input's affine and shape. `{inferer['_target_']}`
(`resfu-med infer`'s own inference: 2D models slice by slice at the training size, 3D models by sliding windows)
with roi `{inferer['roi_size']}`, overlap `{inferer['overlap']}`, Gaussian blending of the softmax, then argmax over
the {out['num_channels']} output channels:

| label | structure |
| --- | --- |
{labels}

## Use

```bash
cd <bundle>
python -m monai.bundle run --config_file configs/inference.json --dataset_dir <folder of NIfTI> --output_dir <out>
python -m monai.bundle verify_metadata --meta_file configs/metadata.json --filepath <resfu_med/bundle/metadata_schema.json>
```

In Python (needs `resfu-med` installed for `network_def`):

```python
from monai.bundle import ConfigParser
import torch

parser = ConfigParser(); parser.read_config("<bundle>/configs/inference.json")
net = parser.get_parsed_content("network_def")
net.load_state_dict(torch.load("<bundle>/models/model.pt", map_location="cpu", weights_only=True))
```

`configs/train.json` fine-tunes from these weights on `<dataset_dir>/imagesTr` + `labelsTr`;
`configs/evaluate.json` reports mean Dice on `<dataset_dir>/imagesTs` + `labelsTs`.

## Training

Trained with resfu-med on `{config.get('data', {}).get('dataset', 'unknown')}`
(epoch {checkpoint_info.get('epoch')}, iteration {checkpoint_info.get('iteration')}).

{_table(train)}
## Metrics

{_table(metadata.get('eval_metrics', {}))}
## References

{chr(10).join('- ' + r for r in metadata.get('references', []))}

## License

See `LICENSE`. {metadata['copyright']}.
"""


def _json(obj: Any, indent: int | None = 2) -> str:
    import json

    return json.dumps(obj, indent=indent, default=str)


def render_license(copyright_line: str) -> str:
    """Apache-2.0 notice for the code and weights (the package's license)."""
    return f"""{copyright_line}

Licensed under the Apache License, Version 2.0 (the "License"); you may not use the files of this bundle except in
compliance with the License. You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software distributed under the License is distributed on
an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the License for the
specific language governing permissions and limitations under the License.

The weights were trained on third-party data; using them may also be subject to that data set's terms of use.
The model is for research only and is not a medical device.
"""
