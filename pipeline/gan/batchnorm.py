"""BatchNorm over the global batch under DDP: what one process on the whole batch computes.

With plain BatchNorm each rank normalises its share of the batch with that share's statistics,
so two GPUs at batch 32 each do not train the model one GPU at batch 64 would. On GPUs this is
torch's SyncBatchNorm. SyncBatchNorm refuses CPU tensors, and CPU/Gloo is where the
equivalence is tested, so on a CPU the same statistics are gathered with the autograd-aware
all-reduce of torch.distributed.nn: per-channel sums, sums of squares and counts, added over
ranks, their gradients flowing back to every rank's own activations.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributed.nn.functional import all_reduce

from pipeline.core.distributed import group_running


class AllReduceBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are the global batch's (any device, any backend).

    Same parameters, buffers and state_dict keys as BatchNorm2d; eval mode and a single process
    are plain BatchNorm2d. Running variance is updated with the unbiased global variance, as
    BatchNorm2d does with the local one.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and group_running()):
            return super().forward(x)
        channels = x.shape[1]
        x32 = x.to(torch.promote_types(x.dtype, torch.float32))  # float32 at least
        count = x32.new_full((1,), x32.numel() / channels)  # values per channel on this rank
        local = torch.cat([x32.sum(dim=(0, 2, 3)), x32.square().sum(dim=(0, 2, 3)), count])
        total = all_reduce(local)  # SUM over ranks; backward sums the gradients the same way
        n = total[-1]
        mean = total[:channels] / n
        var = (total[channels:2 * channels] / n - mean.square()).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                momentum = 0.1 if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * n / (n - 1), momentum)
                self.num_batches_tracked.add_(1)
        shape = (1, channels, 1, 1)
        y = (x32 - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def synchronise_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm2d in `module` normalising over the global batch, in place (the children
    keep their parameter and buffer tensors, so optimisers and EMA copies stay valid).

    CUDA: torch's SyncBatchNorm. Elsewhere: AllReduceBatchNorm2d.
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            synced = AllReduceBatchNorm2d(child.num_features, child.eps, child.momentum,
                                          child.affine, child.track_running_stats)
            synced.weight, synced.bias = child.weight, child.bias
            synced.running_mean, synced.running_var = child.running_mean, child.running_var
            synced.num_batches_tracked = child.num_batches_tracked
            synced.train(child.training)
            setattr(module, name, synced)
        else:
            synchronise_batchnorm(child, device)
    return module
