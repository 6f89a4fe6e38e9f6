"""LeNet-5 as in the classroom VLSI homework flow (docs/homework.md): no bias in the base model."""

from collections import OrderedDict

from torch import nn


class LeNet5(nn.Sequential):
    """LeNet-5 for a C x 32 x 32 input (MNIST-like 28 x 28 images padded by 2).

    conv 5x5 C->6, ReLU, maxpool 2 -> conv 5x5 6->16, ReLU, maxpool 2 -> conv 5x5 16->120, ReLU
    -> flatten -> FC 120->84, ReLU -> FC 84->num_classes. Without bias and with C = 1 and 10
    classes: 61,470 parameters and 416,520 multiply-adds per image; `bias=True` adds 236.
    Build it with `bitsmith.models.build_model("lenet5", ...)`, which checks the input shape.
    """

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int], bias: bool) -> None:
        in_channels = input_shape[0]
        super().__init__(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(in_channels, 6, 5, bias=bias)),  # 6 x 28 x 28
                    ("conv1_relu", nn.ReLU(inplace=False)),
                    ("pool1", nn.MaxPool2d(2)),  # 6 x 14 x 14
                    ("conv2", nn.Conv2d(6, 16, 5, bias=bias)),  # 16 x 10 x 10
                    ("conv2_relu", nn.ReLU(inplace=False)),
                    ("pool2", nn.MaxPool2d(2)),  # 16 x 5 x 5
                    ("conv3", nn.Conv2d(16, 120, 5, bias=bias)),  # 120 x 1 x 1
                    ("conv3_relu", nn.ReLU(inplace=False)),
                    ("flatten", nn.Flatten()),
                    ("fc1", nn.Linear(120, 84, bias=bias)),
                    ("fc1_relu", nn.ReLU(inplace=False)),
                    ("fc2", nn.Linear(84, num_classes, bias=bias)),
                ]
            )
        )
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape)
