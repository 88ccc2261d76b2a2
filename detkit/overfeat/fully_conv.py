"""A classification network made fully convolutional (OverFeat §3.5; seeds 002, "7. OverFeat").

LeCun, quoted in the seeds: *"In Convolutional Nets, there is no such thing as fully-connected
layers. There are only convolution layers with 1x1 convolution kernels and a full connection
table."* The classifier is re-expressed with the **same weights**:

* AlexNet / ZFNet / VGG (``features`` + ``classifier`` of Linear layers): fc6, which reads the
  ``k x k x C`` pooled map (k = 6 AlexNet/ZF, 7 VGG), becomes a ``k x k`` convolution (its weight
  ``(D, C*k*k)`` viewed as ``(D, C, k, k)``, the order ``flatten`` used); fc7 and fc8 become
  ``1 x 1`` convolutions. ReLU and dropout act elementwise and stay as they are.
* GoogLeNet / ResNet (global average pool + fc): the average pool becomes an ``AvgPool2d`` with
  the **training window** (the final map's side at the training input size: 7 at 224) and
  **stride 1**, and the fc a ``1 x 1`` convolution. At the training size this is exactly the
  global pool; on a larger image each output averages one training-sized window.

At the training input size the output is ``1 x 1`` and equals the original network's scores.
On a larger image it is a grid: with total stride ``S`` (32 for AlexNet: 4·2·2·2, also for VGG,
GoogLeNet, ResNet), an input ``n0 + S*m`` gives ``(1 + m) x (1 + m)`` outputs — the seeds' toy
(14x14 training input -> 5x5 map -> 1x1; 16x16 test input -> 6x6 map -> 2x2) is the case
``S = 2, m = 1``. Output ``(i, j)`` is the classifier applied to the window whose top-left
corner is ``(i*S, j*S)`` in the input, of side ``n0`` (:func:`window_boxes`).

The network is split around its **last max pool** (the pool offset pooling acts on):
``pre`` -> ``pool`` -> ``post`` gives the "pooled map" ``P`` on which the classifier (and the
box regression network) slide a ``window x window`` kernel. ``post`` is empty for AlexNet/ZF/VGG
(pool5 is the last layer before fc6); for GoogLeNet it is inception 5a-5b (pool = maxpool4);
for ResNet it is conv2_x..conv5_x (pool = the stem's 3x3/2 pool, the only max pool), so offset
pooling there re-runs every residual stage once per offset (``s^2 = 4`` times the cost).
"""
from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn
from torch.func import functional_call

from detkit.overfeat.offset_pool import interleave_offsets, offset_max_pool

__all__ = ["FullyConvNet", "fully_convolutional", "linear_to_conv", "pooled_side", "window_boxes"]


class FullyConvNet(nn.Module):
    """``pre -> pool -> post`` gives the pooled map ``P``; ``classifier`` slides over it.

    Shapes: image ``(N, 3, H, W)`` -> ``P`` ``(N, C, h, w)`` -> scores ``(N, K, h - window + 1,
    w - window + 1)``; with offset pooling, ``P`` is ``(s^2 N, C, h, w)`` and the scores are
    interleaved to ``(N, K, s * (h - window + 1), s * (w - window + 1))``.

    Attributes:
        window: side of the classifier's window on ``P`` (fc6's ``k``, or the average pool's).
        pool_stride: stride ``s`` of the last max pool (offsets per axis).
        stride: total stride ``S`` of ``P`` (pixels between adjacent outputs without offsets).
        input_size: the classification network's training input side ``n0`` (one window).
        out_channels: ``C`` of ``P`` (what a box regression network on ``P`` reads).
    """

    def __init__(self, *, pre: nn.Module, pool: nn.Module, pool_stride: int, post: nn.Module,
                 classifier: nn.Module, window: int, input_size: int, out_channels: int) -> None:
        super().__init__()
        self.pre, self.pool, self.post, self.classifier = pre, pool, post, classifier
        self.pool_stride = int(pool_stride)
        self.window = int(window)
        self.input_size = int(input_size)
        self.out_channels = int(out_channels)
        self._pooled_sides: dict[int, int] = {}
        side = self._pooled_side(self.input_size)
        if side != self.window:
            raise ValueError(f"FullyConvNet: at the training input size {self.input_size} the pooled map is "
                             f"{side}x{side}, but the classifier's window is {self.window}x{self.window}")
        self.stride = self._measure_stride()

    def pooled(self, x: Tensor, *, offsets: bool = False) -> Tensor:
        """Images ``(N, 3, H, W)`` -> pooled map ``P``: ``(N, C, h, w)``, or ``(s^2 N, C, h, w)``
        (offset-major, :func:`offset_max_pool`) with ``offsets``."""
        x = self.pre(x)
        x = offset_max_pool(x, self.pool, self.pool_stride) if offsets else self.pool(x)
        return self.post(x)

    def forward(self, x: Tensor, *, offsets: bool = False) -> Tensor:
        """Class scores on the dense grid (see the class docstring for shapes)."""
        y = self.classifier(self.pooled(x, offsets=offsets))
        return interleave_offsets(y, self.pool_stride) if offsets else y

    def grid_step(self, offsets: bool) -> int:
        """Pixels between adjacent outputs: ``S``, or ``S / s`` with offset pooling."""
        return self.stride // self.pool_stride if offsets else self.stride

    def grid_side(self, n: int, offsets: bool) -> int:
        """Outputs along an axis of ``n >= input_size`` pixels: ``h - window + 1`` for the pooled
        side ``h``, times ``s`` with offset pooling (the interleaved grid of :meth:`forward`)."""
        if n not in self._pooled_sides:  # measured on meta tensors, once per size
            self._pooled_sides[n] = self._pooled_side(n)
        return (self.pool_stride if offsets else 1) * (self._pooled_sides[n] - self.window + 1)

    # --- size arithmetic, measured on the network itself ---
    def _pooled_side(self, n: int) -> int:
        return pooled_side(nn.Sequential(self.pre, self.pool, self.post), n)

    def _measure_stride(self) -> int:
        # Growing the input by a multiple of the total stride grows P by exactly that multiple
        # over the stride (floor/ceil size formulas are periodic in it); 2^6·3^2·5·7 covers the
        # strides of every network here (32, OverFeat's 36, ...).
        delta = 2 ** 6 * 3 ** 2 * 5 * 7
        grow = self._pooled_side(self.input_size + delta) - self.window
        if grow <= 0 or delta % grow:
            raise ValueError(f"FullyConvNet: cannot measure the network's total stride (+{delta} px input "
                             f"gave +{grow} outputs)")
        stride = delta // grow
        if stride % self.pool_stride:
            raise ValueError(f"FullyConvNet: total stride {stride} is not a multiple of the last pool's "
                             f"stride {self.pool_stride}")
        return stride


def pooled_side(body: nn.Module, n: int) -> int:
    """Side of ``body``'s output for an ``n x n`` input, run on meta tensors (no memory, no
    compute, the real weights untouched) so the size arithmetic comes from the network itself."""
    meta = {k: torch.empty_like(v, device="meta")
            for k, v in itertools.chain(body.named_parameters(), body.named_buffers())}
    return int(functional_call(body, meta, (torch.empty(1, 3, n, n, device="meta"),)).shape[-1])


def linear_to_conv(linear: nn.Linear, in_channels: int, kernel: int) -> nn.Conv2d:
    """An ``nn.Linear`` reading a flattened ``(C, k, k)`` map as a ``k x k`` convolution sharing
    its parameters (weight ``(D, C*k*k)`` viewed as ``(D, C, k, k)``; no copy)."""
    d, f = linear.weight.shape
    if f != in_channels * kernel * kernel:
        raise ValueError(f"linear_to_conv: Linear with {f} inputs cannot read a {in_channels}x{kernel}x{kernel} map")
    conv = nn.Conv2d(in_channels, d, kernel, bias=linear.bias is not None)
    conv.weight = nn.Parameter(linear.weight.detach().view(d, in_channels, kernel, kernel),
                               requires_grad=linear.weight.requires_grad)
    if linear.bias is not None:
        conv.bias = nn.Parameter(linear.bias.detach(), requires_grad=linear.bias.requires_grad)
    return conv


def _last_max_pool(layers: list[nn.Module]) -> int:
    idx = [i for i, m in enumerate(layers) if isinstance(m, nn.MaxPool2d)]
    if not idx:
        raise ValueError("fully_convolutional: the network's `features` has no max pool to split at")
    return idx[-1]


def _stride_of(pool: nn.Module) -> int:
    s = pool.stride
    s = s[0] if isinstance(s, tuple) else s
    return int(s)


def _from_fc_net(net: nn.Module, input_size: int) -> FullyConvNet:
    """AlexNet / ZFNet / VGG: features (.. pool5) + Linear classifier."""
    layers = list(net.features)
    last = _last_max_pool(layers)
    k = net.avgpool.output_size
    k = int(k[0] if isinstance(k, tuple) else k)
    channels = int(net.out_channels)
    convs, first = [], True
    for m in net.classifier:
        if isinstance(m, nn.Linear):
            convs.append(linear_to_conv(m, channels, k if first else 1))
            channels, first = m.out_features, False
        else:  # ReLU, Dropout: elementwise, valid on maps as on vectors
            convs.append(m)
    return FullyConvNet(pre=nn.Sequential(*layers[:last]), pool=layers[last],
                        pool_stride=_stride_of(layers[last]), post=nn.Sequential(*layers[last + 1:]),
                        classifier=nn.Sequential(*convs), window=k, input_size=input_size,
                        out_channels=net.out_channels)


class _GoogLeNetInput(nn.Module):
    """GoogLeNet's ``transform_input`` (torchvision weights expect [-1, 1] inputs)."""

    def __init__(self, transform_input: bool) -> None:
        super().__init__()
        self.transform_input = bool(transform_input)

    def forward(self, x: Tensor) -> Tensor:
        from detkit.backbones.googlenet import GoogLeNet
        return GoogLeNet._transform(self, x)  # uses only `transform_input`


def _gap_head(fc: nn.Linear, dropout: nn.Module | None) -> list[nn.Module]:
    conv = linear_to_conv(fc, fc.in_features, 1)
    return [m for m in (dropout, conv) if m is not None]


def _from_googlenet(net: nn.Module, input_size: int) -> FullyConvNet:
    pre = nn.Sequential(_GoogLeNetInput(net.transform_input), net.conv1, net.maxpool1, net.lrn1, net.conv2,
                        net.conv3, net.lrn2, net.maxpool2, net.inception3a, net.inception3b, net.maxpool3,
                        *[getattr(net, f"inception4{c}") for c in "abcde"])
    return _gap_net(pre, net.maxpool4, nn.Sequential(net.inception5a, net.inception5b),
                    _gap_head(net.fc, net.dropout), net.out_channels, input_size)


def _from_resnet(net: nn.Module, input_size: int) -> FullyConvNet:
    pre = nn.Sequential(net.conv1, net.bn1, net.relu)
    post = nn.Sequential(net.layer1, net.layer2, net.layer3, net.layer4)
    return _gap_net(pre, net.maxpool, post, _gap_head(net.fc, None), net.out_channels, input_size)


def _gap_net(pre, pool, post, head, channels, input_size) -> FullyConvNet:
    # The window is the final map's side at the training size; measured with a placeholder head.
    k = pooled_side(nn.Sequential(pre, pool, post), input_size)
    classifier = nn.Sequential(nn.AvgPool2d(k, stride=1), *head)
    return FullyConvNet(pre=pre, pool=pool, pool_stride=_stride_of(pool), post=post, classifier=classifier,
                        window=k, input_size=input_size, out_channels=channels)


def fully_convolutional(net: nn.Module, *, input_size: int | None = None) -> FullyConvNet:
    """Turn a detkit classification network into a :class:`FullyConvNet` with the same weights.

    Args:
        net: ``alexnet()``, ``alexnet_tv()``, ``zfnet()``, ``vgg16()``, ``googlenet()``,
            ``googlenet_tv()``, ``resnet50()`` / ``resnet101()`` (or any net with the same layout).
            Its modules are shared, not copied.
        input_size: the training input side ``n0`` (227 AlexNet, 224 the others); default: 227 for
            nets whose first conv has an 11x11 kernel without padding (paper AlexNet), else 224.
    """
    from detkit.backbones.googlenet import GoogLeNet
    from detkit.backbones.resnet import ResNet

    if input_size is None:
        first = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
        paper_alexnet = first is not None and first.kernel_size == (11, 11) and first.padding == (0, 0)
        input_size = 227 if paper_alexnet else 224
    if isinstance(net, GoogLeNet):
        return _from_googlenet(net, input_size)
    if isinstance(net, ResNet):
        return _from_resnet(net, input_size)
    if all(hasattr(net, a) for a in ("features", "avgpool", "classifier", "out_channels")):
        return _from_fc_net(net, input_size)
    raise ValueError(f"fully_convolutional: don't know how to make {type(net).__name__} fully convolutional "
                     "(expected AlexNet/ZFNet/VGG layout, GoogLeNet or ResNet)")


def window_boxes(grid_h: int, grid_w: int, *, step: float, window: float, device=None) -> Tensor:
    """The input windows of a dense output grid: ``(grid_h * grid_w, 4)`` xyxy, row-major.

    Output ``(u, v)`` reads the window ``[v*step, u*step, v*step + window, u*step + window]``
    (``step`` = :meth:`FullyConvNet.grid_step`, ``window`` = ``input_size``).
    """
    ys = torch.arange(grid_h, device=device, dtype=torch.float32) * step
    xs = torch.arange(grid_w, device=device, dtype=torch.float32) * step
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    x, y = x.reshape(-1), y.reshape(-1)
    return torch.stack((x, y, x + window, y + window), dim=1)

