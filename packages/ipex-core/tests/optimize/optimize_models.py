"""Models for the ipex.optimize tests and benchmark (torchvision is not usable here).

Random weights; BatchNorm statistics and affine parameters are randomised so
that folding is exercised with non-trivial values.
"""

from __future__ import annotations

import torch
from torch import nn


def randomize_bn(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model


class Bottleneck(nn.Module):
    """torchvision's ResNet bottleneck: one ReLU module shared by three call sites, `out += identity`."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """The ResNet-50 topology (layers 3-4-6-3); ``width`` 64 is the real model."""

    def __init__(self, layers=(3, 4, 6, 3), width: int = 64, num_classes: int = 1000):
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make(width, layers[0])
        self.layer2 = self._make(width * 2, layers[1], 2)
        self.layer3 = self._make(width * 4, layers[2], 2)
        self.layer4 = self._make(width * 8, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width * 8 * 4, num_classes)

    def _make(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        down = None
        if stride != 1 or self.inplanes != planes * 4:
            down = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False),
                                 nn.BatchNorm2d(planes * 4))
        layers = [Bottleneck(self.inplanes, planes, stride, down)]
        self.inplanes = planes * 4
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50(width: int = 64, num_classes: int = 1000) -> ResNet:
    return randomize_bn(ResNet(width=width, num_classes=num_classes)).eval()


def bert(hidden: int = 768, layers: int = 12, heads: int = 12, intermediate: int = 3072, vocab: int = 30522,
         **kwargs) -> nn.Module:
    """A BERT encoder from a transformers config, random weights (bert-base by default)."""
    from transformers import BertConfig, BertModel

    cfg = BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=intermediate, vocab_size=vocab, **kwargs)
    torch.manual_seed(0)
    return BertModel(cfg).eval()


class Decoder(nn.Module):
    """ConvTranspose decoder: ConvTranspose2d + BatchNorm + ReLU stages, a ConvTranspose3d head."""

    def __init__(self, c: int = 16):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, 2, 1)
        self.up1 = nn.ConvTranspose2d(c, c, 4, 2, 1)
        self.bn1 = nn.BatchNorm2d(c)
        self.up2 = nn.ConvTranspose2d(c, c // 2, 3, 2, 1, output_padding=1, groups=2)
        self.out = nn.Conv2d(c // 2, 3, 3, padding=1)
        self.up3d = nn.ConvTranspose3d(2, 4, 3, stride=2, padding=1, output_padding=1)

    def forward(self, x, v):
        y = torch.relu(self.bn1(self.up1(torch.relu(self.stem(x)))))
        y = torch.sigmoid(self.out(torch.nn.functional.silu(self.up2(y))))
        return y, torch.tanh(self.up3d(v))


class ConvNd(nn.Module):
    """Conv1d and Conv3d stacks with BatchNorm and activations (strides, dilation, groups, 'same' padding)."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.c1 = nn.Conv1d(4, c, 5, padding=2)
        self.b1 = nn.BatchNorm1d(c)
        self.c1b = nn.Conv1d(c, c, 3, stride=2, dilation=2, padding="valid", groups=2)
        self.c1c = nn.Conv1d(c, c, 3, padding="same", padding_mode="reflect")
        self.c3 = nn.Conv3d(2, c, 3, padding=1)
        self.b3 = nn.BatchNorm3d(c)
        self.c3b = nn.Conv3d(c, c, 3, stride=2, padding=1)
        self.act = nn.Hardswish()

    def forward(self, s, v):
        s = nn.functional.gelu(self.b1(self.c1(s)), approximate="tanh")
        t = self.c1c(self.c1b(s))
        s = t + s[..., : t.shape[-1]]
        v = self.act(self.b3(self.c3(v)))
        return s, nn.functional.leaky_relu(self.c3b(v), 0.1)


class LSTMNet(nn.Module):
    """Embedding + 2-layer bidirectional LSTM + Linear head (batch_first)."""

    def __init__(self, vocab: int = 50, emb: int = 16, hidden: int = 24):
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.lstm = nn.LSTM(emb, hidden, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(2 * hidden, 5)

    def forward(self, ids):
        out, _ = self.lstm(self.emb(ids))
        return self.head(out[:, -1])


class MLPBN(nn.Module):
    """Linear + BatchNorm1d + ReLU blocks, a Linear without bias, dropout, a Linear + add residual."""

    def __init__(self, d: int = 32, width: int = 64):
        super().__init__()
        self.fc1 = nn.Linear(d, width)
        self.bn1 = nn.BatchNorm1d(width)
        self.fc2 = nn.Linear(width, width, bias=False)
        self.bn2 = nn.BatchNorm1d(width)
        self.drop = nn.Dropout(0.5)
        self.fc3 = nn.Linear(width, width)
        self.fc4 = nn.Linear(width, 10)

    def forward(self, x):
        h = self.drop(torch.relu(self.bn1(self.fc1(x))))
        h = nn.functional.gelu(self.bn2(self.fc2(h)))
        h = self.fc3(h) + h
        return self.fc4(nn.functional.dropout(h, 0.3, self.training))


class Untraceable(nn.Module):
    """FX cannot trace this forward (control flow on a tensor value); its children still optimize."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.2))
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = self.bn(self.conv(x))
        if y.sum() > 0:  # data-dependent: a TraceError under torch.fx
            y = y * 1.0
        y = self.block(y)
        return self.fc(y.mean((2, 3)))


class QKV(nn.Module):
    """Three Linears reading one input (attention projections), for concat_linear."""

    def __init__(self, d: int = 32):
        super().__init__()
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, 16)
        self.o = nn.Linear(d, d)

    def forward(self, x):
        q, k, v = self.q(x), self.k(x), self.v(x)
        a = torch.softmax(q @ k.transpose(-1, -2) / 8, -1)
        return self.o(torch.cat([a @ v, a @ v], -1)) + x
