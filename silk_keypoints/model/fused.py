"""The fused inference network: BatchNorm folded into convolutions, channels-last, fused heads, optional bf16.

:class:`FusedSiLK` is built from a :class:`~silk_keypoints.model.silk.SiLK` in eval mode and computes the same
outputs with fewer, larger operations:

* **BatchNorm folding.** A BN that follows its conv directly (``conv-bn-relu`` blocks, the last Conv1x1 -> BN
  of each head) folds into that conv. In the original's ``conv-relu-bn`` blocks the BN comes after the ReLU,
  so it folds into the *next* conv instead: ``conv(s*x + t) = conv_{w*s}(x) + (b + sum w*t)``. That is exact
  only when the next conv has no zero padding (padding 0 or a 1x1 kernel) and no max-pool sits in between;
  otherwise the BN stays as an explicit per-channel affine. The last backbone BN folds into both heads.
  Folding is computed in float64 and rounded once to float32; first-layer running variances near 0 make the
  folded weights large, so VGG-4 parity logits still move a little (docs/performance.md, Accuracy).
* **Fused heads.** The first convs of the keypoint and descriptor heads read the same features and run as
  one convolution with both heads' output channels; the 1x1 output convs run as matrix products on the
  channels-last activations.
* **Channels-last** (NHWC) activations, the layout oneDNN's and cuDNN's fastest convolutions use.
* **Single-channel first conv on CPU** as an im2col matrix product (oneDNN is slow with one input channel;
  docs/performance.md).
* **Sparse extraction** (:meth:`FusedSiLK.passes` / :meth:`FusedSiLK.descriptors_at`, driven by
  :func:`~silk_keypoints.model.pipeline.extract_features`): the descriptor 1x1 conv runs only at the selected
  cells; the dense descriptor map is never built.
* **A reused workspace on CPU.** Every fresh 100+ MB activation costs the kernel page faults (glibc maps
  blocks above 32 MB anew on each call and the kernel zeroes them; docs/performance.md measures it).
  :meth:`FusedSiLK.passes` writes each such conv output into one of two reused buffers instead (oneDNN
  conv with a fused in-place add + ReLU on a zeroed buffer) and runs large batches a few images at a time;
  the buffers stay allocated between calls until :meth:`FusedSiLK.release_workspace`.
* **bf16** (``dtype=torch.bfloat16``): weights and activations in bfloat16 with float32 accumulation, except
  the first ``FLOAT32_CONVS`` convs (the cheap ones that see the raw image and absorb the first BN, whose
  near-zero variances make bf16 rounding errors blow up). Faster on CPUs with AVX512-BF16/AMX and on GPUs,
  at the price of errors on the logits (docs/performance.md): an option, never the default.

Dense outputs are float32 (the dtype of the source model), NCHW-shaped tensors in channels-last memory.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import ConvBlock, local_contrast
from .pipeline import images_per_pass

FLOAT32_CONVS = 2  # in bf16 mode, the first convs that still compute in float32
WORKSPACE_PIXELS = 1 << 18  # CPU extraction: images per workspace pass ~ this many pixels (at least one image)
# smaller activations come from malloc's heap anyway (glibc maps blocks above 32 MB freshly on every call)
WORKSPACE_MIN_BYTES = 32 << 20
Affine = tuple[torch.Tensor, torch.Tensor]  # per-channel (scale, shift): y = scale * x + shift


def bn_affine(bn: nn.Module) -> Affine | None:
    """Eval-mode BatchNorm as a float64 per-channel affine ``(scale, shift)``; None for ``nn.Identity``."""
    if not isinstance(bn, nn.BatchNorm2d):
        return None
    var = bn.running_var.double()
    mean = bn.running_mean.double()
    weight = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    bias = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    scale = weight / torch.sqrt(var + bn.eps)
    return scale, bias - mean * scale


def fold_output_affine(w: torch.Tensor, b: torch.Tensor, affine: Affine) -> tuple[torch.Tensor, torch.Tensor]:
    """``affine(conv_{w,b}(x)) = conv_{w',b'}(x)``: scale the outputs of weight (O, I, k, k), bias (O,)."""
    scale, shift = affine
    return w * scale[:, None, None, None], b * scale + shift


def fold_input_affine(w: torch.Tensor, b: torch.Tensor, affine: Affine) -> tuple[torch.Tensor, torch.Tensor]:
    """``conv_{w,b}(affine(x)) = conv_{w',b'}(x)``, exact for a conv without zero padding."""
    scale, shift = affine
    return w * scale[None, :, None, None], b + (w * shift[None, :, None, None]).sum(dim=(1, 2, 3))


@functools.cache
def inplace_conv_available() -> bool:
    """Whether oneDNN's conv with a fused in-place add (``mkldnn::_convolution_pointwise_``) works here."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        x = torch.ones(1, 2, 4, 4).contiguous(memory_format=torch.channels_last)
        w = torch.ones(3, 2, 3, 3).contiguous(memory_format=torch.channels_last)
        out = torch.ones(1, 3, 2, 2).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            _conv_add_(out, x, w, None, 0, relu=True)
        return bool(torch.all(out == 19))
    except (RuntimeError, AttributeError):
        return False


def _conv_add_(
    out: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    padding: int,
    relu: bool,
) -> torch.Tensor:
    """``out = relu?(conv(x, weight, bias) + out)`` in place (stride 1), channels-last tensors."""
    op = torch.ops.mkldnn._convolution_pointwise_.binary
    return op(
        out, x, weight, bias, [padding] * 2, [1, 1], [1, 1], 1, "add", 1.0, "relu" if relu else None, [], ""
    )


class Workspace:
    """Reused activation buffers: two flat buffers per dtype, handed out alternately, so a layer never
    writes the buffer it reads. :meth:`take` returns NCHW-shaped views that are channels-last in memory."""

    def __init__(self) -> None:
        self._flat: dict[tuple[torch.dtype, int], torch.Tensor] = {}
        self._turn: dict[torch.dtype, int] = {}

    def restart(self) -> None:
        """Start a new pass: hand out the slots in the same order as the previous pass (no re-allocation)."""
        self._turn.clear()

    def take(
        self, shape: tuple[int, int, int, int], dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        n, c, h, w = shape
        slot = self._turn.get(dtype, 0)
        self._turn[dtype] = 1 - slot
        flat = self._flat.get((dtype, slot))
        stale = flat is not None and flat.is_inference() != torch.is_inference_mode_enabled()
        if flat is None or stale or flat.numel() < n * c * h * w or flat.device != device:
            del flat  # free the smaller buffer before allocating the larger one
            self._flat.pop((dtype, slot), None)
            flat = self._flat[(dtype, slot)] = torch.empty(n * c * h * w, dtype=dtype, device=device)
        return flat[: n * c * h * w].view(n, h, w, c).permute(0, 3, 1, 2)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._flat.values())


class FusedConv(nn.Module):
    """Conv (+ ReLU) with folded weights. ``im2col``: single-channel input as one matrix product (CPU)."""

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor,
        padding: int,
        relu: bool,
        dtype: torch.dtype,
        channels_last: bool,
    ) -> None:
        super().__init__()
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.register_buffer("weight", weight.to(dtype).contiguous(memory_format=memory_format))
        self.register_buffer("bias", bias.to(dtype))
        self.padding = padding
        self.relu = relu
        self.im2col = channels_last and weight.shape[1] == 1 and weight.shape[2] > 1

    def forward(self, x: torch.Tensor, ws: Workspace | None = None) -> torch.Tensor:
        """(B, I, H, W) -> (B, O, H', W'); with a workspace the output is one of its buffers (CPU only)."""
        dtype = self.weight.dtype
        if ws is not None and x.dtype != dtype:
            x = ws.take(tuple(x.shape), dtype, x.device).copy_(x)
        x = x.to(dtype)
        cpu = x.device.type == "cpu"
        if self.im2col and cpu:
            return self._single_channel_conv(x, ws)
        n, _, h, w = x.shape
        k = self.weight.shape[-1]
        shape = (n, self.weight.shape[0], h + 2 * self.padding - k + 1, w + 2 * self.padding - k + 1)
        if ws is None or not cpu or math.prod(shape) * x.element_size() < WORKSPACE_MIN_BYTES:
            x = F.conv2d(x, self.weight, self.bias, padding=self.padding)
            return F.relu(x, inplace=True) if self.relu else x
        out = ws.take(shape, dtype, x.device).zero_()
        return _conv_add_(out, x, self.weight, self.bias, self.padding, self.relu)

    def _single_channel_conv(self, x: torch.Tensor, ws: Workspace | None) -> torch.Tensor:
        """(B, 1, H, W) -> (B, O, H', W') channels-last, via (B*H'*W', k*k) @ (k*k, O)."""
        k = self.weight.shape[-1]
        if self.padding:
            x = F.pad(x, (self.padding,) * 4)
        b, _, h, w = x.shape
        ho, wo = h - k + 1, w - k + 1
        x = x.contiguous()
        patches = x.as_strided((b, ho, wo, k, k), (h * w, w, 1, w, 1)).reshape(b * ho * wo, k * k)
        cout = self.weight.shape[0]
        if ws is None or b * ho * wo * cout * x.element_size() < WORKSPACE_MIN_BYTES:
            out = torch.addmm(self.bias, patches, self.weight.reshape(cout, k * k).t()).view(b, ho, wo, cout)
            out = out.permute(0, 3, 1, 2)
        else:
            out = ws.take((b, cout, ho, wo), x.dtype, x.device)
            torch.addmm(
                self.bias,
                patches,
                self.weight.reshape(cout, k * k).t(),
                out=out.permute(0, 2, 3, 1).view(-1, cout),
            )
        return F.relu(out, inplace=True) if self.relu else out


class ChannelAffine(nn.Module):
    """An unfoldable BatchNorm: per channel ``y = scale * x + shift`` (in place with a workspace)."""

    def __init__(self, affine: Affine, dtype: torch.dtype) -> None:
        super().__init__()
        self.register_buffer("scale", affine[0].to(dtype)[None, :, None, None])
        self.register_buffer("shift", affine[1].to(dtype)[None, :, None, None])

    def forward(self, x: torch.Tensor, ws: Workspace | None = None) -> torch.Tensor:
        scale, shift = self.scale.to(x.dtype), self.shift.to(x.dtype)
        return x.mul_(scale).add_(shift) if ws is not None else torch.addcmul(shift, x, scale)


class MaxPool(nn.Module):
    def forward(self, x: torch.Tensor, ws: Workspace | None = None) -> torch.Tensor:
        return F.max_pool2d(x, 2, 2)


def _fold_block(block: ConvBlock, pending: Affine | None) -> tuple[torch.Tensor, torch.Tensor, Affine | None]:
    """Weights of ``block``'s conv with the ``pending`` input affine and, if possible, its own BN folded in.

    Returns (weight, bias, affine still to apply to the block's output: its BN when it follows the ReLU).
    """
    conv = block.conv
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else w.new_zeros(w.shape[0])
    if pending is not None:
        w, b = fold_input_affine(w, b, pending)
    bn = bn_affine(block.bn)
    if bn is not None and not (block.relu and block.relu_first):
        return (*fold_output_affine(w, b, bn), None)
    return w, b, bn


def _absorbs(block: ConvBlock) -> bool:
    """Whether an input affine folds exactly into ``block``'s conv (no zero padding)."""
    return block.conv.padding in (0, (0, 0)) or block.conv.kernel_size == (1, 1)


class FusedSiLK(nn.Module):
    """Inference-only SiLK network with folded BatchNorm. ``forward(images)`` -> (logits, raw_descriptors).

    Implements :class:`~silk_keypoints.model.pipeline.DenseNetwork` (``passes``, ``probability``,
    ``descriptors_at``) and, for the named outputs, ``trunk``, ``features`` and ``heads``.

    Args:
        model: the source :class:`SiLK` (its current weights and eval-mode BN statistics are copied).
        dtype: compute dtype (default: the model's, float32); ``torch.bfloat16`` for the bf16 path.
        channels_last: NHWC activations and CPU-specific kernels (set False for export: plain NCHW ops).
    """

    def __init__(
        self, model: nn.Module, dtype: torch.dtype | None = None, channels_last: bool = True
    ) -> None:
        super().__init__()
        self.out_dtype = model.descriptor_scale.dtype
        self.dtype = dtype or self.out_dtype
        self.channels_last = channels_last
        self.contrast_window = model.backbone.contrast_window
        with torch.no_grad():
            layers, pending = self._fold_backbone(model.backbone)
            heads = (model.keypoint_head, model.descriptor_head)
            if pending is not None and not all(_absorbs(h.hidden) for h in heads):
                layers.append(ChannelAffine(pending, self.dtype))
                pending = None
            self.backbone = nn.ModuleList(layers)
            # named output `features` = feature_affine(backbone output) when the last BN was folded away
            self.feature_affine = ChannelAffine(pending, self.dtype) if pending is not None else None
            self.hidden, out = self._fold_heads(heads, pending)
        self.head_channels = model.config.head_channels
        self.grid = model.grid
        self.offset_head = model.offset_head  # float32, run at the selected cells only (shared, not folded)
        for name, (w, b) in zip(("keypoint", "descriptor"), out):
            self.register_buffer(f"{name}_weight", w.to(self.dtype))
            self.register_buffer(f"{name}_bias", b.to(self.dtype))
        self._workspace = Workspace()
        self._lock = threading.Lock()  # one caller at a time uses the workspace

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_workspace"], state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._workspace = Workspace()
        self._lock = threading.Lock()

    def _fold_backbone(self, backbone: nn.Module) -> tuple[list[nn.Module], Affine | None]:
        layers: list[nn.Module] = []
        pending = None
        for s, stage in enumerate(backbone.stages):
            for block in stage:
                if pending is not None and not _absorbs(block):
                    layers.append(ChannelAffine(pending, self.dtype))
                    pending = None
                w, b, pending = _fold_block(block, pending)
                n_convs = sum(isinstance(m, FusedConv) for m in layers)
                dtype = (
                    self.out_dtype if n_convs < FLOAT32_CONVS and self.dtype == torch.bfloat16 else self.dtype
                )
                layers.append(FusedConv(w, b, block.conv.padding[0], block.relu, dtype, self.channels_last))
            if s in backbone.pool_after:
                if pending is not None:
                    layers.append(ChannelAffine(pending, self.dtype))
                    pending = None
                layers.append(MaxPool())
        return layers, pending

    def _fold_heads(self, heads: tuple[nn.Module, ...], pending: Affine | None) -> tuple[FusedConv, list]:
        """Both heads' first convs as one conv; their 1x1 output convs (BNs folded) as (O, C) matrices."""
        hidden = [_fold_block(h.hidden, pending) for h in heads]
        w = torch.cat([h[0] for h in hidden])
        b = torch.cat([h[1] for h in hidden])
        conv = FusedConv(
            w, b, heads[0].hidden.conv.padding[0], heads[0].hidden.relu, self.dtype, self.channels_last
        )
        out = []
        for head, (_, _, hidden_bn) in zip(heads, hidden):
            wo, bo, _ = _fold_block(head.out, hidden_bn)
            out.append((wo[:, :, 0, 0], bo))
        return conv, out

    def trunk(self, images: torch.Tensor, ws: Workspace | None = None) -> torch.Tensor:
        """(B, C, H, W) images -> backbone output in the compute dtype (before ``feature_affine``)."""
        x = images.to(self.out_dtype)
        if self.contrast_window:
            x = local_contrast(x, self.contrast_window)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for layer in self.backbone:
            x = layer(x, ws)
        return x

    def features(self, backbone_out: torch.Tensor) -> torch.Tensor:
        """The named output ``features`` from :meth:`trunk`."""
        x = self.feature_affine(backbone_out) if self.feature_affine is not None else backbone_out
        return x.to(self.out_dtype)

    def heads(
        self, backbone_out: torch.Tensor, logits: bool = True, descriptors: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Backbone output -> (logits (B, 1, Hf, Wf), raw descriptors (B, D, Hf, Wf)); skipped: None."""
        ch = self.head_channels
        conv = self.hidden
        backbone_out = backbone_out.to(self.dtype)
        if logits and descriptors:
            hidden = conv(backbone_out)
        else:  # only one head: its half of the fused conv
            part = slice(0, ch) if logits else slice(ch, 2 * ch)
            x = F.conv2d(backbone_out, conv.weight[part], conv.bias[part], padding=conv.padding)
            hidden = F.relu(x, inplace=True) if conv.relu else x
        outputs: list[torch.Tensor | None] = []
        offset = 0
        for wanted, name in ((logits, "keypoint"), (descriptors, "descriptor")):
            if not wanted:
                outputs.append(None)
                continue
            h = hidden[:, offset : offset + ch]
            offset += ch
            outputs.append(self._conv1x1(h, getattr(self, f"{name}_weight"), getattr(self, f"{name}_bias")))
        return outputs[0], outputs[1]

    def _conv1x1(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        if not self.channels_last:
            return F.conv2d(x, weight[:, :, None, None], bias).to(self.out_dtype)
        b, _, h, w = x.shape
        y = torch.addmm(bias, x.permute(0, 2, 3, 1).reshape(b * h * w, -1), weight.t())
        return y.to(self.out_dtype).view(b, h, w, -1).permute(0, 3, 1, 2)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, raw = self.heads(self.trunk(images))
        return logits, raw

    def passes(self, images: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]]:
        """Per pass: (both heads' hidden maps (b, 2 * head_channels, Hf, Wf), the named output ``features`` if
        the model has an offset head (else None), the pass's images), a few images per pass.

        On CPU the passes reuse the workspace (about ``WORKSPACE_PIXELS`` pixels each) when no other caller
        holds it; a state is valid until the next one is produced.
        """
        use_ws = self.channels_last and images.device.type == "cpu" and inplace_conv_available()
        ws = self._workspace if use_ws and self._lock.acquire(blocking=False) else None
        try:
            per_pass = images_per_pass(images, WORKSPACE_PIXELS) if ws else images.shape[0]
            for chunk in images.split(per_pass):
                if ws is not None:
                    ws.restart()
                trunk = self.trunk(chunk, ws)
                features = self.features(trunk) if self.offset_head is not None else None
                yield self.hidden(trunk, ws), features, chunk
        finally:
            if ws is not None:
                self._lock.release()

    def probability(self, state: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Keypoint probability (b, 1, Hf, Wf) from a pass's hidden maps."""
        ch = self.head_channels
        return torch.sigmoid(self._conv1x1(state[0][:, :ch], self.keypoint_weight, self.keypoint_bias))

    def descriptors_at(self, state: tuple[torch.Tensor, ...], image: int, cells: torch.Tensor) -> torch.Tensor:
        """Unit descriptors (U, D) of flat cells ``cells`` of image ``image``: the 1x1 conv at those cells only."""
        part = state[0][image, self.head_channels :]
        rows = part.permute(1, 2, 0).reshape(-1, part.shape[0])[cells]
        d = torch.addmm(self.descriptor_bias, rows, self.descriptor_weight.t())
        return F.normalize(d.to(self.out_dtype), p=2, dim=1)

    def offsets_at(self, state: tuple[torch.Tensor, ...], image: int, cells: torch.Tensor) -> torch.Tensor | None:
        """Sub-cell offsets (U, 2) px of flat cells ``cells`` of image ``image`` (None without an offset head)."""
        if self.offset_head is None:
            return None
        return self.offset_head.at_cells(state[1][image], state[2][image].to(self.out_dtype), cells)

    def release_workspace(self) -> None:
        """Free the CPU workspace buffers (they are re-allocated by the next :meth:`extract`)."""
        with self._lock:
            self._workspace = Workspace()

    def workspace_bytes(self) -> int:
        """Memory held by the CPU workspace between calls."""
        return self._workspace.nbytes()
