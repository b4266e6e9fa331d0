"""Small real models for the experiments: a CNN and a ResNet with BatchNorm for Fashion-MNIST, and a
character-level transformer."""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable


class _ChannelsLastMaxPool(torch.autograd.Function):
    """F.max_pool2d(x, 2) on an NCHW tensor, bit for bit (values, the argmax kept on ties and NaNs, gradients), with
    the forward pass run by the channels-last kernel and the backward pass by the NCHW kernel on its indices (both
    index within the H x W plane). On the project's CPUs torch's NCHW forward kernel is ~2-4x slower than this pair:
    it was a third of E2's and E4's CNN run time (measured, one thread, batches of 128 and 256)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out, index = torch.ops.aten.max_pool2d_with_indices(x.contiguous(memory_format=torch.channels_last), [2, 2],
                                                            [2, 2])
        ctx.save_for_backward(x, index.contiguous())
        return out.contiguous()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        x, index = ctx.saved_tensors
        return torch.ops.aten.max_pool2d_with_indices_backward(grad.contiguous(), x, [2, 2], [2, 2], [0, 0], [1, 1],
                                                               False, index)


class MaxPool2x2(nn.Module):
    """nn.MaxPool2d(2) with the same results, faster on CPU (_ChannelsLastMaxPool); other layouts and devices, and
    inputs that are not 4-d, go to F.max_pool2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and x.device.type == "cpu" and x.is_contiguous():
            return _ChannelsLastMaxPool.apply(x)
        return nn.functional.max_pool2d(x, 2)


class SmallCNN(nn.Module):
    """conv(1->c1, 3x3) - ReLU - maxpool - conv(c1->c2, 3x3) - ReLU - maxpool - linear(->hidden) - ReLU - linear(->10)."""

    def __init__(self, channels: tuple[int, int] = (16, 32), hidden: int = 64, classes: int = 10):
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), MaxPool2x2(),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), MaxPool2x2(),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c2 * 7 * 7, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    """Residual basic block: conv3x3 - BN - ReLU - conv3x3 - BN, plus the shortcut, then ReLU.

    The shortcut is the identity when the shape is kept, else a strided 1x1 conv with BN (He et al. 2016, option B)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.residual = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),  # BN supplies the bias
            nn.BatchNorm2d(out_channels), nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
        )
        reshaped = stride != 1 or in_channels != out_channels
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels),
        ) if reshaped else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.residual(x) + self.shortcut(x))


class SmallResNet(nn.Module):
    """A compact ResNet for 1x28x28 images: stem conv3x3 - BN - ReLU, three stages of one BasicBlock each
    (channels c1, c2, c3; the last two halve the resolution: 28 -> 14 -> 7), global average pooling, linear head.
    `stem_stride` = 2 halves the input in the stem (stages at 14, 7, 4 pixels: ~1/4 of the compute).

    Why a second vision model: every convolution is followed by BatchNorm, so the loss is invariant to the scale
    of the convolution weights. Their gradient is orthogonal to them and shrinks as 1/|w|, so the effective
    (angular) step depends on the weight norm (lr/|w|^2 for SGD, lr/|w| for Adam-type steps): weight decay acts as
    a learning-rate schedule, and LAMB's layer-wise trust ratio |w|/|update| removes the dependence. That is a
    different optimization problem from SmallCNN's (no normalization) and the pre-norm transformer's (LayerNorm
    normalizes each block's input, not its weights' output, so those weights are not scale-invariant)."""

    def __init__(self, channels: tuple[int, int, int] = (16, 32, 64), classes: int = 10, stem_stride: int = 1):
        super().__init__()
        c1, c2, c3 = channels
        self.stem = nn.Sequential(nn.Conv2d(1, c1, 3, stride=stem_stride, padding=1, bias=False), nn.BatchNorm2d(c1),
                                  nn.ReLU())
        self.stages = nn.Sequential(BasicBlock(c1, c1), BasicBlock(c1, c2, stride=2), BasicBlock(c2, c3, stride=2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c3, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


class CharTransformer(nn.Module):
    """Decoder-only transformer over characters: token + learned position embeddings, pre-norm blocks, tied head."""

    def __init__(self, vocabulary_size: int, context: int = 64, width: int = 64, layers: int = 2, heads: int = 4):
        super().__init__()
        self.context = context
        self.token = nn.Embedding(vocabulary_size, width)
        nn.init.normal_(self.token.weight, std=0.02)  # tied head: unit-scale embeddings would give huge logits
        self.position = nn.Parameter(torch.zeros(context, width))
        nn.init.normal_(self.position, std=0.02)
        block = nn.TransformerEncoderLayer(width, heads, dim_feedforward=4 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.register_buffer("causal_mask", nn.Transformer.generate_square_subsequent_mask(context), persistent=False)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        length = codes.shape[1]
        h = self.token(codes) + self.position[:length]
        h = self.blocks(h, mask=self.causal_mask[:length, :length], is_causal=True)
        return self.norm(h) @ self.token.weight.T  # tied output embedding: fewer parameters, better small-data fit
