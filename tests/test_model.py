import torch

from cnn.model import Net, conv_channels


def test_width_one_is_the_tutorial_net():
    net = Net()
    assert (net.conv1.in_channels, net.conv1.out_channels, net.conv1.kernel_size) == (3, 6, (5, 5))
    assert (net.conv2.in_channels, net.conv2.out_channels) == (6, 16)
    assert [(m.in_features, m.out_features) for m in (net.fc1, net.fc2, net.fc3)] == [(400, 120), (120, 84), (84, 10)]
    assert sum(p.numel() for p in net.parameters()) == 62006  # the tutorial model's size
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_width_multiplies_conv_channels_only():
    net = Net(width=4)
    assert (net.conv1.out_channels, net.conv2.out_channels) == (24, 64)
    assert net.fc1.in_features == 64 * 25 and net.fc1.out_features == 120
    assert net(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    assert conv_channels(0.5) == (3, 8)
