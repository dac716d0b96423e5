"""gencore.models: every model forward + backward at its documented sizes, shapes, conditioning, bad input, a seeded
golden check of a tiny UNet (reference backend; the fused cpu backend agrees), torch.export, and gencore.optimize."""
import pytest
import torch

import gencore
from gencore.models import (MODELS, ConditionalDCGANDiscriminator, ConditionalDCGANGenerator, DCGANDiscriminator,
                            DCGANGenerator, ProjectionDiscriminator, UNet, WGANGPCritic, build_model, describe)
from gencore.testing import assert_close, assert_equal, backend_params

TINY_UNET = dict(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), attention_heads=2,
                 norm_groups=4)


@pytest.fixture(autouse=True)
def _reference_backend():
    # The fused backends are tested against the reference in their own files; here the models run on the reference
    # unless a test asks for a backend.
    with gencore.use_backend("reference"):
        yield


def _grads_finite(model):
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


# ---------------------------------------------------------------------------------------------------------------------
# UNet


@pytest.mark.parametrize("size, norm", [((28, 28), "default"), ((17, 23), "scale_shift"), ((1, 1), "default")],
                         ids=["28", "odd17x23-scale_shift", "1x1"])
def test_unet_any_size_forward_backward(size, norm):
    torch.manual_seed(0)
    m = UNet(in_channels=1, time_embedding_norm=norm, **TINY_UNET)
    x = torch.randn(2, 1, *size)
    y = m(x, torch.tensor([0, 999]))
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().mean().backward()
    _grads_finite(m)


def test_unet_defaults_mnist():
    m = UNet(in_channels=1, out_channels=1)
    assert m.config["channel_mult"] == [1, 2, 2] and m.num_classes is None
    with torch.no_grad():
        y = m(torch.randn(1, 1, 28, 28), 10)
    assert y.shape == (1, 1, 28, 28)


def test_unet_scalar_and_vector_timesteps_agree():
    torch.manual_seed(0)
    m = UNet(in_channels=1, **TINY_UNET).eval()
    x = torch.randn(3, 1, 12, 12)
    with torch.no_grad():
        a = m(x, 7)
        b = m(x, torch.tensor(7))
        c = m(x, torch.full((3,), 7, dtype=torch.long))
    assert_equal(a, c)
    assert_equal(b, c)


def test_unet_class_conditioning_and_null_class():
    torch.manual_seed(0)
    m = UNet(in_channels=1, num_classes=10, **TINY_UNET).eval()
    assert m.null_class == 10
    x = torch.randn(2, 1, 12, 12)
    with torch.no_grad():
        y_null = m(x, 5, None)
        y_explicit_null = m(x, 5, torch.tensor([10, 10]))
        y_cond = m(x, 5, torch.tensor([3, 4]))
    assert_equal(y_null, y_explicit_null)
    assert not torch.allclose(y_null, y_cond)


def test_unet_out_channels_and_dropout():
    m = UNet(in_channels=3, out_channels=6, dropout=0.1, **TINY_UNET)
    assert m(torch.randn(1, 3, 8, 8), 1).shape == (1, 6, 8, 8)


@pytest.mark.parametrize("kwargs, match", [
    (dict(norm_groups=3), "norm_groups"),
    (dict(attention_levels=(5,)), "attention_levels"),
    (dict(time_embedding_norm="film"), "time_embedding_norm"),
    (dict(channel_mult=()), "channel_mult"),
    (dict(dropout=1.0), "dropout"),
    (dict(num_classes=0), "num_classes"),
])
def test_unet_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNet(in_channels=1, **{**TINY_UNET, **kwargs})


def test_unet_refuses_groups_that_discard_the_conditioning():
    # One channel per group: the embedding added per channel before GroupNorm is its group's mean, subtracted again.
    with pytest.raises(ValueError, match=r"norm_groups \(32\) leaves one channel per group"):
        UNet(in_channels=1, base_channels=32, norm_groups=32)
    with pytest.raises(ValueError, match="base_channels"):
        UNet(in_channels=1, base_channels=1)
    UNet(in_channels=1, base_channels=32, norm_groups=32, time_embedding_norm="scale_shift")  # applied after norm


@pytest.mark.parametrize("base_channels", [2, 3, 16, 32, 64])
def test_unet_default_groups_keep_the_conditioning(base_channels):
    """With the default groups, every residual block's output depends on the time and class embedding."""
    torch.manual_seed(0)
    m = UNet(in_channels=1, base_channels=base_channels, num_classes=10).eval()
    assert base_channels // m.config["norm_groups"] >= 2
    blocks = [mod for mod in m.modules() if type(mod).__name__ == "ResBlock"]
    outputs = {}
    for key, (t, label) in {"a": (10, 3), "b": (900, 7)}.items():
        temb = m._embed(torch.zeros(1, 1, 8, 8), torch.tensor([t]), torch.tensor([label]))
        with torch.no_grad():
            outputs[key] = [blk(torch.randn(1, blk.conv1.in_channels, 8, 8, generator=torch.Generator().manual_seed(1)),
                                temb) for blk in blocks]
    for blk, a, b in zip(blocks, outputs["a"], outputs["b"]):
        assert (a - b).abs().max() > 1e-3 * a.abs().max(), blk


def test_unet_constructor_is_keyword_only():
    with pytest.raises(TypeError):
        UNet(1, 1)


def test_unet_bad_inputs():
    m = UNet(in_channels=1, **TINY_UNET)
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match="x must have shape"):
        m(torch.randn(2, 3, 8, 8), 1)
    with pytest.raises(ValueError, match="timesteps"):
        m(x, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="unconditional"):
        m(x, 1, torch.tensor([0, 1]))
    mc = UNet(in_channels=1, num_classes=4, **TINY_UNET)
    with pytest.raises(ValueError, match="class_labels"):
        mc(x, 1, torch.tensor([0]))


# Golden output of a seeded tiny UNet, computed once in float64 on the reference backend (torch 2.13 CPU) and
# committed: guards against silent changes in initialisation order, layer wiring or the embedding.
GOLDEN_SUM = -37.32373965039709
GOLDEN_ABS_SUM = 55.669250741237114
GOLDEN_EVERY_17TH = [0.22032399812167675, -0.23909128548811742, -0.20765030146814653, 0.5183646089689973,
                     -0.023810863449946325, -0.5770425165545491, -0.42482781334638225, -0.10762398578881857,
                     -0.5521447635175902, -0.4053271558175267, 0.18869626170980702, -0.1279991729849185]


def _golden_model_and_input(dtype):
    torch.manual_seed(0)
    m = UNet(in_channels=1, num_classes=3, time_embedding_norm="scale_shift", **TINY_UNET).to(dtype).eval()
    torch.manual_seed(1)
    x = torch.randn(2, 1, 9, 11, dtype=torch.float64).to(dtype)
    return m, x


def _golden_output(m, x):
    with torch.no_grad():
        return m(x, torch.tensor([3, 500]), torch.tensor([1, 3])).double()


def test_unet_golden_reference():
    y = _golden_output(*_golden_model_and_input(torch.float64))
    assert y.shape == (2, 1, 9, 11)
    assert_close(y.flatten()[::17], torch.tensor(GOLDEN_EVERY_17TH, dtype=torch.float64))
    assert_close(y.sum(), GOLDEN_SUM)
    assert_close(y.abs().sum(), GOLDEN_ABS_SUM)


@pytest.mark.parametrize("backend", backend_params(("cpu",)))
def test_unet_golden_fused_backend_agrees(backend):
    m, x = _golden_model_and_input(torch.float32)
    with gencore.use_backend(backend):
        y = _golden_output(m, x)
    # float32 through ~20 layers of O(1) activations: a few 1e-6 relative per layer.
    assert_close(y.flatten()[::17], torch.tensor(GOLDEN_EVERY_17TH, dtype=torch.float64), "float32_compounded")


def test_unet_torch_export():
    torch.manual_seed(0)
    m = UNet(in_channels=1, num_classes=3, **TINY_UNET).eval()
    x, t, c = torch.randn(2, 1, 28, 28), torch.tensor([1, 900]), torch.tensor([0, 3])
    ep = torch.export.export(m, (x, t, c))
    with torch.no_grad():
        assert_close(ep.module()(x, t, c), m(x, t, c), "float32_reordered")


def test_unet_bf16_autocast():
    m = UNet(in_channels=1, **TINY_UNET)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(torch.randn(2, 1, 12, 12), torch.tensor([1, 2]))
    y.float().mean().backward()
    _grads_finite(m)


# ---------------------------------------------------------------------------------------------------------------------
# DCGAN family


@pytest.mark.parametrize("size", [28, 32, 64])
def test_dcgan_generator_discriminator(size):
    torch.manual_seed(0)
    g = DCGANGenerator(latent_dim=100, features=8, out_channels=1, image_size=size)
    d = DCGANDiscriminator(in_channels=1, features=8, image_size=size)
    z = torch.randn(3, 100)
    x = g(z)
    assert x.shape == (3, 1, size, size) and x.abs().max() <= 1
    assert g(z[:, :, None, None]).shape == x.shape
    logits = d(x)
    assert logits.shape == (3,)
    logits.sum().backward()
    _grads_finite(g)
    _grads_finite(d)


def test_dcgan_tutorial_architecture_at_64():
    g, d = DCGANGenerator(), DCGANDiscriminator(in_channels=3)
    convs = [m for m in g.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(100, 512), (512, 256), (256, 128), (128, 64),
                                                                (64, 1)]
    dconvs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in dconvs] == [(3, 64), (64, 128), (128, 256), (256, 512),
                                                                 (512, 1)]
    assert not any(isinstance(m, torch.nn.Sigmoid) for m in d.modules())  # logits: the sigmoid is in the loss


@pytest.mark.parametrize("size", [28, 64])
def test_dcgan_extra_layers(size):
    """extra_layers adds stride-1 3x3 convolutions at the generator's last and the discriminator's first hidden
    resolution; the image sizes and the rest of the stack stay the tutorial's."""
    torch.manual_seed(0)
    g = DCGANGenerator(features=8, image_size=size, extra_layers=2)
    d = DCGANDiscriminator(features=8, image_size=size, extra_layers=2)
    plain = DCGANGenerator(features=8, image_size=size)
    convs = [m for m in g.modules() if type(m) is torch.nn.Conv2d]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [(8, 8, (3, 3), (1, 1))] * 2
    assert ([m.in_channels for m in g.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
            == [m.in_channels for m in plain.modules() if isinstance(m, torch.nn.ConvTranspose2d)])
    assert sum(type(m) is torch.nn.Conv2d and m.kernel_size == (3, 3) for m in d.modules()) == 2
    x = g(torch.randn(3, 100))
    assert x.shape == (3, 1, size, size) and d(x).shape == (3,)
    d(x).sum().backward()
    _grads_finite(g)
    _grads_finite(d)
    desc = describe(g)
    assert desc["config"]["extra_layers"] == 2
    build_model(desc["name"], desc["config"]).load_state_dict(g.state_dict())


@pytest.mark.parametrize("size", [28, 32, 64])
@pytest.mark.parametrize("norm", ["none", "layer"])
def test_wgan_critic_double_backward(size, norm):
    torch.manual_seed(0)
    c = WGANGPCritic(features=8, image_size=size, norm=norm)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in c.modules())
    x = torch.randn(2, 1, size, size, requires_grad=True)
    (grad,) = torch.autograd.grad(c(x).sum(), x, create_graph=True)
    grad.flatten(1).norm(dim=1).sub(1).square().mean().backward()  # the gradient penalty's double backward
    _grads_finite(c)


def test_wgan_critic_rejects_batch_norm():
    with pytest.raises(ValueError, match="batch norm"):
        WGANGPCritic(norm="batch")


@pytest.mark.parametrize("size", [28, 32, 64])
def test_conditional_models(size):
    torch.manual_seed(0)
    g = ConditionalDCGANGenerator(num_classes=10, features=8, image_size=size)
    z, labels = torch.randn(4, 100), torch.tensor([0, 3, 9, 3])
    x = g(z, labels)
    assert x.shape == (4, 1, size, size)
    for d in (ConditionalDCGANDiscriminator(num_classes=10, features=8, image_size=size),
              ProjectionDiscriminator(num_classes=10, features=8, image_size=size)):
        out = d(x, labels)
        assert out.shape == (4,)
        out.sum().backward(retain_graph=True)
        _grads_finite(d)
    _grads_finite(g)


def test_projection_discriminator_uses_labels():
    torch.manual_seed(0)
    d = ProjectionDiscriminator(num_classes=10, features=8, image_size=28).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert not torch.allclose(d(x, torch.tensor([0, 0])), d(x, torch.tensor([5, 5])))


@pytest.mark.parametrize("make, match", [
    (lambda: DCGANGenerator(image_size=48), "image_size"),
    (lambda: DCGANDiscriminator(norm="instance"), "norm"),
    (lambda: DCGANGenerator(latent_dim=0), "latent_dim"),
    (lambda: DCGANGenerator(extra_layers=-1), "extra_layers"),
    (lambda: DCGANDiscriminator(extra_layers=1.5), "extra_layers"),
])
def test_gan_bad_config(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_gan_bad_inputs():
    g, d = DCGANGenerator(features=8, image_size=28), DCGANDiscriminator(features=8, image_size=28)
    with pytest.raises(ValueError, match="z must have shape"):
        g(torch.randn(2, 50))
    with pytest.raises(ValueError, match="images must have shape"):
        d(torch.randn(2, 1, 32, 32))
    cg = ConditionalDCGANGenerator(features=8, image_size=28)
    with pytest.raises(ValueError, match="labels"):
        cg(torch.randn(2, 100), torch.tensor([1.0, 2.0]))


def test_build_model_round_trip():
    for name, kwargs in [("UNet", dict(in_channels=1, **TINY_UNET)), ("DCGANGenerator", dict(features=8)),
                         ("ProjectionDiscriminator", dict(features=8, image_size=28))]:
        m = MODELS[name](**kwargs)
        desc = describe(m)
        m2 = build_model(desc["name"], desc["config"])
        m2.load_state_dict(m.state_dict())
    with pytest.raises(ValueError, match="unknown model"):
        build_model("ResNet", {})


# ---------------------------------------------------------------------------------------------------------------------
# gencore.optimize


def test_optimize_without_compile_matches():
    torch.manual_seed(0)
    m = UNet(in_channels=1, **TINY_UNET).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        ref = m(x, torch.tensor([3, 4]))
        opt = gencore.optimize(m, compile=False)
        out = opt(x, torch.tensor([3, 4]))
    assert next(p for p in opt.parameters() if p.dim() == 4).is_contiguous(memory_format=torch.channels_last)
    assert_close(out, ref, "float32_reordered")


def test_optimize_compiled_generator_matches():
    torch.manual_seed(0)
    g = DCGANGenerator(features=8, image_size=28).eval()
    z = torch.randn(4, 100)
    with torch.no_grad():
        ref = g(z)
        out = gencore.optimize(g)(z)
    assert_close(out, ref, "float32_reordered")


def test_optimize_rejects_non_module():
    with pytest.raises(TypeError):
        gencore.optimize(lambda x: x)
