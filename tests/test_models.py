"""The model handle and model specs: load_model, parse_model_spec, as_clip_model, checkpoints, model ids."""

import hashlib
import json
import os
import shutil
import socket
import warnings

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from crossgap_qdrant.inversion import OTIConfig, OVIConfig, oti_invert, ovi_invert
from crossgap_qdrant.models import (
    CheckpointError,
    ClipModel,
    PartsFormDeprecationWarning,
    RandomWeightsWarning,
    as_clip_model,
    encode_images,
    encode_texts,
    load_model,
    loading,
    register_model_config,
)
from crossgap_qdrant.models.checkpoints import weights_digest
from crossgap_qdrant.models.specs import DEMO_MODEL_DIR, parse_model_spec, read_model_config
from tests.support.tiny_models import TINY_BIDIR, TINY_CLIP

DEMO_WEIGHTS = DEMO_MODEL_DIR / "open_clip_pytorch_model.bin"
needs_demo = pytest.mark.skipif(not DEMO_WEIGHTS.is_file(), reason="demo checkpoint not present")


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory, tiny_clip):
    """tiny_clip's weights saved as a plain state dict."""
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    torch.save(tiny_clip.model.state_dict(), path)
    return path


def _digest_reference(model: torch.nn.Module) -> str:
    """The digest recomputed the plain way: sorted names, float32 values, sha256."""
    digest = hashlib.sha256()
    for key in sorted(model.state_dict()):
        value = model.state_dict()[key].detach().cpu()
        canonical = value.float() if value.is_floating_point() else value
        digest.update(f"{key}|{canonical.dtype}|{tuple(value.shape)};".encode())
        digest.update(canonical.contiguous().numpy().tobytes())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------ handle
def test_handle_unpacks_and_describes_the_model(tiny_clip):
    assert isinstance(tiny_clip, ClipModel)
    model, preprocess, tokenizer = tiny_clip
    assert (model, preprocess, tokenizer) == (tiny_clip.model, tiny_clip.preprocess, tiny_clip.tokenizer)
    assert len(tiny_clip) == 3 and tiny_clip[0] is model and tiny_clip[-1] is tokenizer
    assert tiny_clip.name == "test-tiny-clip" and tiny_clip.pretrained is None
    assert model.crossgap_model_name == "test-tiny-clip" and model.crossgap_pretrained is None
    assert tiny_clip.device == torch.device("cpu") and tiny_clip.embed_dim == 32
    name, _, digest = tiny_clip.model_id.partition("@")
    assert name == "test-tiny-clip" and len(digest) == 16 and int(digest, 16) >= 0
    assert weights_digest(model) == _digest_reference(model)
    assert "Transformer" not in repr(tiny_clip)  # the repr names the model, not its modules


def test_model_id_follows_the_weights_not_the_path(tmp_path, tiny_clip, tiny_weights):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = tmp_path / "a" / "w.pt", tmp_path / "b" / "copy.bin"
    shutil.copy(tiny_weights, first)
    shutil.copy(tiny_weights, second)
    one = load_model("test-tiny-clip", first, device="cpu")
    two = load_model("test-tiny-clip", str(second), device="cpu")
    assert one.model_id == two.model_id == tiny_clip.model_id
    assert (one.pretrained, two.pretrained) == ("w.pt", "copy.bin")  # the file name, never the path
    assert str(tmp_path) not in one.model_id + one.display_name

    changed = {k: v.clone() for k, v in tiny_clip.model.state_dict().items()}
    changed["text_projection"][0, 0] += 1e-3
    torch.save(changed, first)  # different weights at the same path
    three = load_model("test-tiny-clip", first, device="cpu")
    assert three.model_id != one.model_id and three.model_id.startswith("test-tiny-clip@")
    assert weights_digest(three.model) == _digest_reference(three.model)


def test_as_clip_model_accepts_handles_and_triples(tiny_clip, tiny_bidir):
    assert as_clip_model(tiny_clip) is tiny_clip
    model, preprocess, tokenizer = tiny_clip
    rebuilt = as_clip_model((model, preprocess, tokenizer))
    assert rebuilt.model_id == tiny_clip.model_id and rebuilt.name == "test-tiny-clip"
    assert as_clip_model([model, preprocess, tokenizer], name="mine").model_id.startswith("mine@")
    assert as_clip_model(tuple(tiny_bidir)).model_id != tiny_clip.model_id
    with pytest.raises(TypeError, match="swapped"):
        as_clip_model((model, tokenizer, preprocess))
    with pytest.raises(TypeError, match="expected a ClipModel"):
        as_clip_model(model)


# ---------------------------------------------------------------------------------------------- weights
def test_random_weights_need_allow_random():
    with pytest.raises(ValueError, match="no weights given for test-tiny-clip.*allow_random=True"):
        load_model("test-tiny-clip", device="cpu")
    with pytest.warns(RandomWeightsWarning, match="random weights.*meaningless"):
        handle = load_model("test-tiny-clip", device="cpu", allow_random=True)
    assert handle.pretrained is None


def test_checkpoint_that_does_not_fit_names_architecture_and_file(tiny_weights):
    with pytest.raises(CheckpointError, match=r"tiny\.pt does not fit architecture test-tiny-bidir") as info:
        load_model("test-tiny-bidir", tiny_weights, device="cpu")
    assert "missing" in str(info.value) or "other shapes" in str(info.value)
    register_model_config("test-tiny-wide", {**TINY_CLIP, "embed_dim": 64})
    with pytest.raises(CheckpointError, match=r"text_projection: checkpoint \[48, 32\], test-tiny-wide \[48, 64\]"):
        load_model("test-tiny-wide", tiny_weights, device="cpu", precision="fp16")


def test_crafted_pickle_checkpoint_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / "evil.pt"
    torch.save({"visual.proj": Payload()}, path)
    with pytest.raises(CheckpointError, match=r"refused checkpoint .*evil\.pt.*weights_only=True.*posix\.system"):
        load_model("test-tiny-clip", path, device="cpu")
    assert not marker.exists()

    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"junk\.bin"):
        load_model("test-tiny-clip", junk, device="cpu")
    empty = tmp_path / "empty.pt"
    torch.save({"epoch": 3}, empty)
    with pytest.raises(CheckpointError, match=r"empty\.pt holds no tensors"):
        load_model("test-tiny-clip", empty, device="cpu")


# ------------------------------------------------------------------------------------------------- specs
def test_parse_model_spec_forms(tmp_path, tiny_weights):
    assert parse_model_spec("ViT-B-32", "openai").tag == "openai"
    with pytest.raises(ValueError, match="'nope' is neither a checkpoint file nor a pretrained tag of ViT-B-32"):
        parse_model_spec("ViT-B-32", "nope")
    with pytest.raises(FileNotFoundError, match="checkpoint file not found"):
        parse_model_spec("test-tiny-clip", str(tmp_path / "missing.pt"))
    spec = parse_model_spec("test-tiny-clip", tiny_weights.parent)  # a folder holding one weights file
    assert spec.checkpoint == tiny_weights and not spec.random
    assert parse_model_spec("test-tiny-clip").random
    hub = parse_model_spec("hf-hub:org/repo")
    assert (hub.name, hub.source, hub.random) == ("hf-hub:org/repo", "hf-hub:org/repo", False)
    with pytest.raises(ValueError, match="carries its own weights"):
        parse_model_spec("crossgap-demo", "openai")
    with pytest.raises(ValueError, match=r"unknown open_clip model .*Did you mean 'ViT-B-32'"):
        parse_model_spec("ViT-B-33")
    with pytest.raises(ValueError, match="It is a folder: .* 'local-dir:"):
        parse_model_spec(str(tmp_path))


def test_hf_hub_without_network_fails_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="could not load the weights of hf-hub:org/no-such-repo"):
        load_model("hf-hub:org/no-such-repo", device="cpu")


def test_register_model_config_accepts_the_open_clip_config_file_layout(tmp_path, tiny_weights):
    config_file = tmp_path / "open_clip_config.json"
    config_file.write_text(json.dumps({"model_cfg": TINY_BIDIR, "preprocess_cfg": {}}))
    register_model_config("test-from-file", json.loads(config_file.read_text()))
    assert read_model_config(config_file) == TINY_BIDIR
    with pytest.warns(RandomWeightsWarning):
        assert load_model("test-from-file", device="cpu", allow_random=True).embed_dim == 32
    config_file.write_text(json.dumps({"model_cfg": {"embed_dim": 3}}))
    with pytest.raises(ValueError, match="lacks vision_cfg, text_cfg"):
        read_model_config(config_file)


def _model_folder(folder, config, weights=None):
    folder.mkdir()
    preprocess = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic"}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": config, "preprocess_cfg": preprocess}))
    if weights is not None:
        shutil.copy(weights, folder / "open_clip_pytorch_model.bin")
    return folder


def test_local_dir_loads_an_open_clip_model_folder(tmp_path, tiny_clip, tiny_weights):
    folder = _model_folder(tmp_path / "my model", TINY_CLIP, tiny_weights)
    handle = load_model(f"local-dir:{folder}", device="cpu")
    assert handle.name == "test-tiny-clip" and handle.pretrained == "my model"  # a known config keeps its name
    assert handle.model_id == tiny_clip.model_id
    ids = handle.tokenizer(["a photo of an owl"])
    torch.testing.assert_close(handle.model.encode_text(ids), tiny_clip.model.encode_text(ids), rtol=0, atol=0)
    assert tuple(handle.preprocess.transforms[-1].mean) == (0.5, 0.5, 0.5)  # the folder's preprocess_cfg is used

    odd = _model_folder(tmp_path / "odd", {**TINY_CLIP, "embed_dim": 16})  # matches no registered config
    with pytest.raises(ValueError, match="local-dir:.*odd holds no weights file.*allow_random"):
        load_model(f"local-dir:{odd}", device="cpu")
    with pytest.warns(RandomWeightsWarning):
        assert load_model(f"local-dir:{odd}", device="cpu", allow_random=True).name == "odd"
    with pytest.raises(FileNotFoundError, match="no open_clip_config.json"):
        load_model(f"local-dir:{tmp_path}", device="cpu")


@needs_demo
def test_crossgap_demo_loads_offline_and_matches_its_folder(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the demo model must load without network access")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    demo = load_model("crossgap-demo", device="cpu")
    assert (demo.name, demo.pretrained, demo.display_name) == (
        "crossgap-demo-clip", "openclipart", "crossgap-demo")  # messages name it as it is loaded
    assert demo.embed_dim == 128 and demo.tokenizer(["an owl"]).shape == (1, 32)
    stored = torch.load(DEMO_WEIGHTS, map_location="cpu", weights_only=True)
    for name, value in demo.model.state_dict().items():
        torch.testing.assert_close(value, stored[name].float(), rtol=0, atol=0)

    copy = tmp_path / "elsewhere"
    shutil.copytree(DEMO_MODEL_DIR, copy)
    same = load_model(f"local-dir:{copy}", device="cpu")
    by_name = load_model("crossgap-demo-clip", pretrained=str(copy / DEMO_WEIGHTS.name), device="cpu")
    assert same.model_id == by_name.model_id == demo.model_id
    with pytest.raises(CheckpointError, match=r"open_clip_pytorch_model\.bin does not fit architecture ViT-B-32"):
        load_model("ViT-B-32", pretrained=str(copy / DEMO_WEIGHTS.name), device="cpu")


# ------------------------------------------------------------------------------------------------ encoders
def test_encode_images_flattens_transparency_onto_white(tmp_path, tiny_clip):
    rgba = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    rgba.paste((200, 30, 30, 255), (8, 8, 24, 24))
    path = tmp_path / "clip.png"
    rgba.save(path)
    white = Image.new("RGB", (32, 32), (255, 255, 255))
    white.paste((200, 30, 30), (8, 8, 24, 24))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_path = encode_images(tiny_clip, [path, rgba])
    expected = encode_images(tiny_clip, [white])
    torch.testing.assert_close(from_path, expected.expand(2, -1))
    black = encode_images(tiny_clip, [rgba.convert("RGB")])
    assert not torch.allclose(black, expected, atol=1e-4)  # the old convert("RGB") path differs


def test_encoders_take_the_handle(tiny_clip):
    model, preprocess, tokenizer = tiny_clip
    pictures = [Image.new("RGB", (32, 32), (40 * i, 90, 10)) for i in range(3)]
    torch.testing.assert_close(encode_images(tiny_clip, pictures), encode_images(model, preprocess, pictures))
    torch.testing.assert_close(tiny_clip.encode_images(pictures), encode_images(model, preprocess, pictures))
    texts = ["a cat", "a red car"]
    torch.testing.assert_close(encode_texts(tiny_clip, texts), encode_texts(model, tokenizer, texts))
    torch.testing.assert_close(tiny_clip.encode_texts(texts), encode_texts(model, tokenizer, texts))
    with pytest.raises(TypeError, match="takes a ClipModel first"):
        encode_images(model, pictures)


def test_load_model_from_local_checkpoint(tmp_path, tiny_clip):
    model, _, tok = tiny_clip
    path = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), path)
    loaded, preprocess, tok2 = load_model("test-tiny-clip", pretrained=str(path), device="cpu")
    assert not any(p.requires_grad for p in loaded.parameters())
    ids = tok2(["a photo of a cat"])
    torch.testing.assert_close(loaded.encode_text(ids), model.encode_text(ids))
    with pytest.raises(FileNotFoundError, match="checkpoint file not found"):
        load_model("test-tiny-clip", pretrained=str(tmp_path / "missing.pt"), device="cpu")
    with pytest.raises(ValueError, match="unknown open_clip model"):
        load_model("no-such-model", device="cpu")


# ------------------------------------------------------------------------------- one calling convention
@pytest.fixture
def parts_form_not_yet_warned(monkeypatch):
    """The process has not used a deprecated parts form yet (the warning is issued once per process)."""
    monkeypatch.setattr(loading, "_parts_form_warned", False)


def test_from_parts_makes_the_handle_load_model_would(tiny_clip):
    model, preprocess, tokenizer = tiny_clip
    clip = ClipModel.from_parts(model, preprocess, tokenizer)
    assert (clip.name, clip.pretrained, clip.model_id) == (tiny_clip.name, tiny_clip.pretrained, tiny_clip.model_id)
    named = ClipModel.from_parts(model, preprocess, tokenizer, name="mine", pretrained="tag")
    assert named.display_name == "mine/tag" and named.model_id.startswith("mine@")
    assert ClipModel.from_parts(model, None, tokenizer).preprocess is None
    with pytest.raises(TypeError, match="swapped"):
        ClipModel.from_parts(model, tokenizer, preprocess)
    with pytest.raises(TypeError, match="nn.Module"):
        ClipModel.from_parts("ViT-B-32", preprocess, tokenizer)
    with pytest.raises(TypeError, match="no preprocess"):
        encode_images(ClipModel.from_parts(model, None, tokenizer), [Image.new("RGB", (32, 32))])


def test_the_old_parts_form_gives_the_same_results_and_warns_once(tiny_clip, parts_form_not_yet_warned):
    model, preprocess, tokenizer = tiny_clip
    texts = ["a cat", "a red car"]
    feats = F.normalize(torch.randn(2, 32, generator=torch.Generator().manual_seed(1)), dim=-1)
    oti, ovi = OTIConfig(steps=2), OVIConfig(steps=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = [encode_texts(model, tokenizer, texts), encode_texts(model, tokenizer=tokenizer, texts=texts),
               oti_invert(model, tokenizer, feats, oti, progress=False).features,
               ovi_invert(model, feats, ovi, progress=False).features]
        as_clip_model((model, preprocess, tokenizer))
    new = [encode_texts(tiny_clip, texts), encode_texts(tiny_clip, texts),
           oti_invert(tiny_clip, feats, oti, progress=False).features,
           ovi_invert(tiny_clip, feats, ovi, progress=False).features]
    for a, b in zip(old, new):
        assert torch.equal(a, b)
    deprecations = [w for w in caught if issubclass(w.category, PartsFormDeprecationWarning)]
    assert issubclass(PartsFormDeprecationWarning, DeprecationWarning)
    assert len(deprecations) == 1, [str(w.message) for w in deprecations]  # once per process, not per call
    assert "ClipModel.from_parts" in str(deprecations[0].message)
    assert deprecations[0].filename == __file__  # attributed to the caller's line
