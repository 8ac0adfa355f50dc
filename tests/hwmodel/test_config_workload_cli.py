"""Hardware configs, workload construction and the report command."""

import json

import numpy as np
import pytest

from hwmodel.__main__ import main as hwmodel_main
from hwmodel.hardware import default_config_dict, hardware_from_dict, hardware_to_dict, load_hardware
from hwmodel.workload import MODELS, model_layers, workload_from_layers


@pytest.mark.parametrize("section,key,value,message", [
    ("escalate", "pes", -4, "escalate.pes: expected a value > 0, got -4"),
    ("escalate", "lanes", 24, "escalate.lanes: expected a power of two >= 2, got 24"),
    ("memory", "act_bits", 40, r"memory.act_bits: expected a bit width in \[1, 32\], got 40"),
    ("systolic", "rows", 7.5, "systolic.rows: expected a whole number, got 7.5"),
    ("memory", "glb_kib", "big", "memory.glb_kib: expected a number, got 'big'"),
    ("options", "dataflow", "rs", r"options.dataflow: expected one of \['os', 'ws', 'is'\], got 'rs'"),
])
def test_invalid_config_values_are_named(section, key, value, message):
    with pytest.raises(ValueError, match=message):
        hardware_from_dict({section: {key: value}})


def test_unknown_keys_and_sections_are_rejected():
    with pytest.raises(ValueError, match="unknown key escalate.pe"):
        hardware_from_dict({"escalate": {"pe": 4}})
    with pytest.raises(ValueError, match="unknown section 'cache'"):
        hardware_from_dict({"cache": {}})


def test_json_and_toml_configs_round_trip(tmp_path):
    config = default_config_dict()
    config["escalate"]["lanes"] = 64
    config["options"]["dataflow"] = "ws"
    (tmp_path / "hw.json").write_text(json.dumps(config))
    toml = "[escalate]\nlanes = 64\n[options]\ndataflow = \"ws\"\n"
    (tmp_path / "hw.toml").write_text(toml)
    a, oa = load_hardware(tmp_path / "hw.json")
    b, ob = load_hardware(tmp_path / "hw.toml")
    loaded = hardware_to_dict(a, oa)
    assert loaded == hardware_to_dict(b, ob)
    assert loaded.pop("options") == config.pop("options")
    for section, values in config.items():
        assert loaded[section] == pytest.approx({k: float(v) for k, v in values.items()}, rel=1e-6)
    (tmp_path / "hw.yaml").write_text("x: 1")
    with pytest.raises(ValueError, match="expected a .json or .toml file"):
        load_hardware(tmp_path / "hw.yaml")
    (tmp_path / "bad.toml").write_text("[escalate\n")
    with pytest.raises(ValueError, match="invalid TOML"):
        load_hardware(tmp_path / "bad.toml")


def test_resnet_shapes_match_pretrained_weights(shared_root):
    with np.load(shared_root / "models" / "cifar10-resnet" / "resnet20.npz") as weights:
        convs = {k[: -len(".weight")]: weights[k].shape for k in weights.files if k.endswith(".weight") and weights[k].ndim == 4}
        fc = weights["linear.weight"].shape
    layers = model_layers("resnet20")
    assert [l["name"] for l in layers[:-1]] == list(convs)
    for layer in layers[:-1]:
        assert (layer["c_out"], layer["c_in"], layer["kernel_size"], layer["kernel_size"]) == convs[layer["name"]]
    assert (layers[-1]["c_out"], layers[-1]["c_in"]) == fc


def test_model_mac_counts_match_published_figures():
    # CIFAR ResNet-20: about 41 M MACs; VGG-16 on 32x32: 313 M (PENNI's "313M FLOPs")
    assert sum(l["macs_dense"] for l in model_layers("resnet20")) == pytest.approx(40.6e6, rel=0.01)
    assert sum(l["macs_dense"] for l in model_layers("vgg16")) == pytest.approx(313.2e6, rel=0.01)


def test_workload_validation_and_per_channel_summary():
    layer = model_layers("resnet20")[1]
    dead = dict(layer, coef_density_per_out_channel=[0.0] * 4 + [0.4] * 12, coef_density=0.3, live_out_fraction=0.75)
    wl = workload_from_layers([dead])
    assert float(wl.live_out_fraction[0]) == pytest.approx(0.75)
    # the live fraction is the producer's; the consumer only checks it against the per-channel list
    with pytest.raises(ValueError, match=r"live_out_fraction: expected the fraction of non-zero coef_density_per_out_channel \(0.75\), got 1.0"):
        workload_from_layers([dict(dead, live_out_fraction=1.0)])
    with pytest.raises(ValueError, match=r"coef_density: expected at most live_out_fraction \(0.25\)"):
        workload_from_layers([dict(dead, coef_density_per_out_channel=[0.0] * 12 + [0.4] * 4, live_out_fraction=0.25)])
    with pytest.raises(ValueError, match=r"layers\[0\] \('layer1.0.conv1'\).coef_density_per_out_channel: expected length 16"):
        workload_from_layers([dict(layer, coef_density_per_out_channel=[0.1] * 3)])
    with pytest.raises(ValueError, match=r"act_density: expected a density in \[0, 1\], got 1.5"):
        workload_from_layers([dict(layer, act_density=1.5)])
    with pytest.raises(ValueError, match="missing keys"):
        workload_from_layers([{"name": "x", "kind": "conv"}])
    with pytest.raises(ValueError, match="model: expected one of"):
        model_layers("resnet18")


def test_report_command_writes_json_and_png(tmp_path, capsys):
    layers = model_layers("resnet20")[:4]
    path = tmp_path / "compressed.json"
    path.write_text(json.dumps({"model": "x", "layers": layers}))
    out = tmp_path / "rep"
    assert hwmodel_main(["report", "--workload", str(path), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    png = (out / "energy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert [r["name"] for r in report["layers"]] == [l["name"] for l in layers]
    for design, total in report["totals"].items():
        assert total["cycles"] == pytest.approx(sum(r[design]["cycles"] for r in report["layers"]), rel=1e-5)
        parts = sum(total[p] for p in ("mac_pj", "buffer_pj", "dram_pj", "network_pj"))
        assert total["energy_uj"] * 1e6 == pytest.approx(parts, rel=1e-5)
    assert "TOTAL" in capsys.readouterr().out


def test_report_command_errors_are_clean(tmp_path, capsys):
    bad = tmp_path / "hw.json"
    bad.write_text(json.dumps({"escalate": {"lanes": 3}}))
    assert hwmodel_main(["report", "--workload", "resnet20", "--hardware", str(bad), "--out", str(tmp_path / "r")]) == 1
    assert "escalate.lanes: expected a power of two" in capsys.readouterr().err
    assert hwmodel_main(["report", "--workload", "alexnet"]) == 1
    assert "--workload: expected a model name" in capsys.readouterr().err
    assert set(MODELS) >= {"resnet20", "resnet56", "vgg16"}
    # a report written before the record required live_out_fraction is refused, saying how to regenerate it
    older = [{k: v for k, v in layer.items() if k != "live_out_fraction"} for layer in model_layers("resnet20")]
    (tmp_path / "old.json").write_text(json.dumps({"layers": older}))
    assert hwmodel_main(["report", "--workload", str(tmp_path / "old.json"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "predates the current layer record" in err and "Regenerate it" in err and "layers[0]" in err
    assert not (tmp_path / "o").exists()


def test_compression_pipeline_layer_records_are_accepted_as_they_are():
    """describe_layers marks widths a layer does not use with 0; the workload fills them as documented."""
    from flax import nnx

    from jaxsparse.penni.count import describe_layers
    from jaxsparse.penni.digits import DigitsCNN
    from jaxsparse.penni.layers import decompose_model

    model = DigitsCNN(widths=(4, 8, 8), rngs=nnx.Rngs(0))
    decompose_model(model, 3)
    records = describe_layers(model, input_shape=(1, 8, 8, 3))
    decomposed = [i for i, r in enumerate(records) if r["basis"] > 0]
    plain = [i for i, r in enumerate(records) if r["basis"] == 0]
    assert decomposed and plain
    wl = workload_from_layers(records)
    for i in decomposed:
        assert float(wl.coef_bits[i]) == records[i]["coef_bits"]
        assert float(wl.weight_bits[i]) == max(records[i]["coef_bits"], records[i]["basis_bits"])
    for i in plain:
        assert float(wl.coef_bits[i]) == records[i]["weight_bits"]
        assert float(wl.basis_bits[i]) == 0.0
    with pytest.raises(ValueError, match=r"coef_bits: expected a bit width in \[1, 32\], got 0"):
        workload_from_layers([dict(records[decomposed[0]], coef_bits=0)])
    with pytest.raises(ValueError, match=r"weight_bits: expected a bit width in \[1, 32\], got 0"):
        workload_from_layers([dict(records[plain[0]], weight_bits=0)])
