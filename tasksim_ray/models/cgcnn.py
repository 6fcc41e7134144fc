"""CGCNN (Xie & Grossman, PRL 2018) on PyG edge lists, state-dict compatible with the published models.

Each convolution updates atom i from its edges (j -> i, bond features u_ij):
z_ij = BN1(W [v_i, v_j, u_ij] + b), split into filter and core halves,
v_i <- softplus(v_i + BN2(sum_j sigmoid(filter_ij) * softplus(core_ij))). The crystal vector is
the mean of the atoms after the last convolution; the head is softplus -> ``conv_to_fc`` ->
softplus (-> ``fcs`` with softplus) -> ``fc_out`` (log-softmax over 2 classes for a classifier).
Parameter names match txie-93/cgcnn, so the published checkpoints load with ``strict=True``.
Graphs come from :func:`tasksim_ray.featurize.crystal.structure_to_graph`.

Which tensor ``embed`` returns: the mixture-of-experts study (Chang et al., npj Comput. Mater.
2022; rees-c/MoE ``get_extractor``, default ``layer_to_extract_from='conv'``) takes as an
extractor's feature softplus(mean-pooled atom features after the last convolution), the input of
``conv_to_fc``. That is the default layer ``conv`` (64-dim); ``fc`` is the last hidden layer of
the head (the input of ``fc_out``, 32-dim). Its fine-tuning default unfreezes the last convolution
only (``num_layers_to_unfreeze=1``), so the last encoder group is ``convs.{n_conv-1}`` and the
``last`` strategy reproduces it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Batch
from torch_geometric.utils import scatter

from tasksim_ray.config import CrystalGraphConfig


class ConvLayer(nn.Module):
    """One gated graph convolution; ``fc_full``, ``bn1`` and ``bn2`` as in the original."""

    def __init__(self, atom_fea_len: int, nbr_fea_len: int) -> None:
        super().__init__()
        self.fc_full = nn.Linear(2 * atom_fea_len + nbr_fea_len, 2 * atom_fea_len)
        self.bn1 = nn.BatchNorm1d(2 * atom_fea_len)
        self.bn2 = nn.BatchNorm1d(atom_fea_len)

    def forward(self, h: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        # W [v_i, v_j, u_ij] = W_i v_i + W_j v_j + W_u u_ij: the atom terms are computed once per atom
        # and gathered per bond (12 bonds an atom), 2x faster than the matmul over the concatenated
        # bond rows (benchmarks/crystal_epoch.py); equal up to float rounding
        nbr, centre = edge_index
        a, weight = h.shape[1], self.fc_full.weight
        per_bond = torch.addmm(self.fc_full.bias, edge_attr, weight[:, 2 * a:].t())
        gated = self.bn1(per_bond + F.linear(h, weight[:, :a]).index_select(0, centre)
                         + F.linear(h, weight[:, a:2 * a]).index_select(0, nbr))
        filt, core = gated.chunk(2, dim=1)
        summed = scatter(torch.sigmoid(filt) * F.softplus(core), centre, dim=0, dim_size=h.shape[0], reduce="sum")
        return F.softplus(h + self.bn2(summed))


class CGCNN(nn.Module):
    LAYERS = ("conv", "fc")
    NODE_LAYERS = ("conv", "last_input")  # atom features after every convolution / entering the last one
    GRAPH_WIDTHS = ("nbr_fea_len",)  # fixed by the graphs: config validation refuses another value

    @staticmethod
    def graph_hparams(graph: CrystalGraphConfig) -> dict[str, Any]:
        """The bond-feature width the graphs of ``data.graph`` have: one per Gaussian centre."""
        from tasksim_ray.featurize.crystal import GraphSettings

        return {"nbr_fea_len": len(GraphSettings.from_config(graph).centres)}

    def __init__(self, orig_atom_fea_len: int = 92, nbr_fea_len: int = 41, atom_fea_len: int = 64,
                 n_conv: int = 4, h_fea_len: int = 32, n_h: int = 1, classification: bool = False,
                 n_tasks: int = 1) -> None:
        super().__init__()
        self.embedding = nn.Linear(orig_atom_fea_len, atom_fea_len)
        self.convs = nn.ModuleList([ConvLayer(atom_fea_len, nbr_fea_len) for _ in range(n_conv)])
        # encoder layer groups, input to output; one group per convolution, the last one last
        self.ENCODER_LAYERS = ("embedding", *(f"convs.{i}" for i in range(n_conv)))
        self._head_shape = (h_fea_len, n_h)
        self._new_head(2 if classification else n_tasks, classification)

    def _new_head(self, n_outputs: int, classification: bool) -> None:
        h_fea_len, n_h = self._head_shape
        self.classification = classification
        self.conv_to_fc = nn.Linear(self.embedding_dim, h_fea_len)
        if n_h > 1:
            self.fcs = nn.ModuleList([nn.Linear(h_fea_len, h_fea_len) for _ in range(n_h - 1)])
            self.softpluses = nn.ModuleList([nn.Softplus() for _ in range(n_h - 1)])
        self.fc_out = nn.Linear(h_fea_len, n_outputs)
        self.dropout = nn.Dropout() if classification else nn.Identity()  # no parameters: state dict unchanged

    @property
    def embedding_dim(self) -> int:
        return self.embedding.out_features

    def _hidden(self) -> list[nn.Module]:
        """The head up to (not including) ``fc_out``; softplus of ``embed`` is its input."""
        layers: list[nn.Module] = [self.conv_to_fc, nn.Softplus(), self.dropout]
        for i in range(self._head_shape[1] - 1):
            layers += [self.fcs[i], self.softpluses[i]]
        return layers

    @property
    def head(self) -> nn.Sequential:
        """The layers after ``embed``: ``head(embed(b)) == forward(b)``. Built on the fly from the
        model's own modules, so its parameters are the model's."""
        tail = [nn.LogSoftmax(dim=1)] if self.classification else []
        return nn.Sequential(*self._hidden(), self.fc_out, *tail)

    def reset_head(self, n_outputs: int = 1) -> None:
        """A freshly initialised regression head (``conv_to_fc``, ``fcs``, ``fc_out``) for a new target."""
        self._new_head(n_outputs, classification=False)
        self.to(self.embedding.weight.device)

    def embed_nodes(self, batch: Batch, layer: str = "conv") -> Tensor:
        """Atom features, shape (n_atoms, atom_fea_len): ``conv`` after the last convolution,
        ``last_input`` entering it (what a mixture of experts whose last convolutions train reads)."""
        if layer not in self.NODE_LAYERS:
            raise ValueError(f"unknown node layer '{layer}'; node layers: {self.NODE_LAYERS}")
        h = self.embedding(batch.x)
        for conv in self.convs if layer == "conv" else self.convs[:-1]:
            h = conv(h, batch.edge_index, batch.edge_attr)
        return h

    def embed(self, batch: Batch, layer: str = "conv") -> Tensor:
        """Graph-level features, shape (n_graphs, dim): ``conv`` is softplus of the mean-pooled atom
        features (the mixture-of-experts extractor feature), ``fc`` the input of ``fc_out``."""
        if layer not in self.LAYERS:
            raise ValueError(f"unknown layer '{layer}'; layers: {self.LAYERS}")
        pooled = scatter(self.embed_nodes(batch), batch.batch, dim=0, dim_size=batch.num_graphs, reduce="mean")
        feature = F.softplus(pooled)
        return nn.Sequential(*self._hidden())(feature) if layer == "fc" else feature

    def forward(self, batch: Batch) -> Tensor:
        return self.head(self.embed(batch))


# --- k convolutions at once: the mixture of experts' trainable last layers --------------------------------------

CHUNK_BYTES = 1 << 21  # edge rows per pass: about 2 MB of (rows, k * 2a) floats, so a chunk's work stays in cache


class _Centres:
    """The edges' centre atoms: gathers of per-atom rows onto edges and sums of per-edge rows onto
    atoms, over edge chunks of about ``CHUNK_BYTES``. When every atom's edges lie together, in atom
    order, the same number per atom (CGCNN's padded neighbour lists), these are reshapes and
    broadcasts instead of index operations, and a chunk holds whole atoms."""

    def __init__(self, centre: Tensor, n_atoms: int) -> None:
        self.centre, degree = centre, len(centre) // max(n_atoms, 1)
        regular = degree > 0 and degree * n_atoms == len(centre) and torch.equal(
            centre.view(n_atoms, degree), torch.arange(n_atoms).unsqueeze(1).expand(n_atoms, degree))
        self.degree = degree if regular else 0

    def chunks(self, width: int) -> list[slice]:
        rows = max(16, CHUNK_BYTES // (4 * width))
        rows = max(self.degree, rows - rows % self.degree) if self.degree else rows
        return [slice(s, min(s + rows, len(self.centre))) for s in range(0, len(self.centre), rows)]

    def _atoms(self, s: slice) -> slice:
        return slice(s.start // self.degree, s.stop // self.degree)

    def add_to(self, rows: Tensor, table: Tensor, s: slice) -> None:
        """rows += table[centre[s]]"""
        if self.degree:
            rows.view(-1, self.degree, *rows.shape[1:]).add_(table[self._atoms(s)].unsqueeze(1))
        else:
            rows += table.index_select(0, self.centre[s])

    def mul_to(self, rows: Tensor, table: Tensor, s: slice) -> None:
        """rows *= table[centre[s]] (broadcast over table's size-1 dimensions)"""
        if self.degree:
            rows.view(-1, self.degree, *rows.shape[1:]).mul_(table[self._atoms(s)].unsqueeze(1))
        else:
            rows.mul_(table.index_select(0, self.centre[s]))

    def sum_into(self, out: Tensor, rows: Tensor, s: slice) -> None:
        """out[centre[s]] += rows"""
        if self.degree:
            out[self._atoms(s)] += rows.view(-1, self.degree, *rows.shape[1:]).sum(1)
        else:
            out.index_add_(0, self.centre[s], rows)


def _halves(y: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The filter and core halves of (rows, k * 2a) expert-major channels, each (rows, k, a)."""
    f, c = y.view(len(y), k, 2, -1).unbind(2)
    return f, c


class Workspace:
    """Memory kept from a training step's forward pass to its backward pass, reused step after step:
    memory the process has not written yet costs a page fault per 4 KiB on first write, which for
    the k = 18 mixture (about 1 GB a step) costs more than the arithmetic it holds. Autograd's
    version check guards it: a second forward pass over it before the first one's backward pass
    makes that backward pass fail rather than read the wrong numbers."""

    def __init__(self) -> None:
        self.memory = torch.empty(0)

    def take(self, n: int) -> Tensor:
        if self.memory.numel() < n:
            self.memory = torch.empty(0)  # release the old block before the larger one is taken
            self.memory = torch.empty(n + n // 8)
        return self.memory[:n]


class _GatedEdgeSum(torch.autograd.Function):
    """S_i = sum_j sigmoid(f_ij) * softplus(c_ij) with [f, c] = BN1(W [v_i, v_j, u_ij] + b), for k
    convolutions side by side: atoms h (atoms, k, a), channels expert-major (k * 2a), the edges in
    chunks that stay in cache, the atom terms W_i v_i and W_j v_j once per atom, the bond term
    W_u u + b once per distinct bond row (``bonds``; ``bond_of_edge`` picks each edge's).

    The backward pass is written out. A message's derivatives with respect to f and c do not depend
    on the incoming gradient, so the forward pass keeps them (``local``) with the normalised
    pre-activations (``xhat``) in the workspace; the incoming gradient is one row per centre atom,
    so BN1's two reductions over every edge (sum of dy, sum of dy * xhat) are per-atom sums the
    forward pass prepares; what is left is one pass over the edges for the bond weights and the
    atom terms."""

    @staticmethod
    def forward(ctx, h: Tensor, bonds: Tensor, weight: Tensor, bias: Tensor, gamma: Tensor, beta: Tensor,
                centre: Tensor, nbr: Tensor, bond_of_edge: Tensor, running: tuple[Tensor, Tensor] | None, eps: float,
                workspace: Workspace | None) -> tuple[Tensor, Tensor, Tensor]:
        (n_atoms, k, a), n_edges, width = h.shape, len(centre), len(bias)
        centres = _Centres(centre, n_atoms)
        chunks = centres.chunks(width)
        keep = workspace is not None
        # per edge (xhat, local); per centre atom (sum of local, of local * xhat); the atom terms
        memory = (workspace or Workspace()).take(2 * (n_edges if keep else 0) * width + 4 * n_atoms * width)
        kept = memory[:2 * n_edges * width].view(2, n_edges, width) if keep else None
        per_atom, terms = memory[len(memory) - 4 * n_atoms * width:].view(2, 2, n_atoms, width).unbind(0)
        for i in range(k):  # W_i v_i and W_j v_j of expert i, each (atoms, 2a), written in place
            cols = slice(i * 2 * a, (i + 1) * 2 * a)
            torch.mm(h[:, i], weight[i, :, :a].t(), out=terms[0][:, cols])
            torch.mm(h[:, i], weight[i, :, a:2 * a].t(), out=terms[1][:, cols])
        # the bond term W_u u + b once per distinct bond row (a crystal repeats its distances), gathered per edge
        w_bond = weight[:, :, 2 * a:].reshape(width, -1)
        per_bond = torch.addmm(bias, bonds, w_bond.t())

        rows = chunks[0].stop - chunks[0].start
        temp = h.new_empty(3, rows, width)  # per-chunk scratch: y, then the messages and their partial sums
        partial = h.new_empty(len(chunks), 2, width)  # per-chunk sums, added up in float64 at the end

        def pre_activation(s: slice) -> Tensor:
            g = torch.index_select(per_bond, 0, bond_of_edge[s], **({} if kept is None else {"out": kept[0, s]}))
            centres.add_to(g, terms[0], s)
            return g.add_(terms[1].index_select(0, nbr[s]))

        pre: list[Tensor] = []
        if running is None:  # training: this batch's mean and variance
            for i, s in enumerate(chunks):
                g = pre_activation(s)
                torch.sum(g, 0, out=partial[i, 0])
                torch.sum(torch.mul(g, g, out=temp[0, :len(g)]), 0, out=partial[i, 1])
                pre.append(g)
            moments = partial.double().sum(0) / n_edges
            mean, var = moments[0].float(), (moments[1] - moments[0] ** 2).clamp(min=0).float()
        else:
            mean, var = running
        invstd = (var + eps).rsqrt()
        out = h.new_zeros(n_atoms, width // 2)
        if keep:
            per_atom.zero_()
        for i, s in enumerate(chunks):
            g = pre[i] if pre else pre_activation(s)
            n = len(g)
            xhat = torch.addcmul(-mean * invstd, g, invstd, out=g)
            f, c = _halves(torch.addcmul(beta, xhat, gamma, out=temp[0, :n]), k)
            sf, sp = _halves(temp[1, :n], k)
            torch.sigmoid(f, out=sf)
            torch.ops.aten.softplus.out(c, 1, 20, out=sp)
            message = temp[2].view(-1)[:n * width // 2].view(n, k, a)
            centres.sum_into(out, torch.mul(sf, sp, out=message).view(n, -1), s)
            if kept is not None:  # d message / d f = softplus(c) sigmoid'(f); d message / d c = sigmoid(f) sigmoid(c)
                d = kept[1, s]
                d_f, d_c = _halves(d, k)
                torch.ops.aten.sigmoid_backward.grad_input(sp, sf, grad_input=d_f)
                torch.mul(sf, torch.sigmoid(c, out=sp), out=d_c)  # softplus' = sigmoid (1.0 in float32 from 17 on)
                centres.sum_into(per_atom[0], d, s)
                centres.sum_into(per_atom[1], torch.mul(d, xhat, out=temp[2, :n]), s)
        if keep:
            ctx.save_for_backward(h, bonds, gamma, invstd, centre, nbr, bond_of_edge, kept, per_atom, terms)
        ctx.training = running is None
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    def backward(ctx, grad_out: Tensor, *_: Tensor) -> tuple[Tensor | None, ...]:
        if not ctx.saved_tensors:
            raise RuntimeError("stacked CGCNN convolutions: the forward pass ran without a workspace, "
                               "so it kept nothing to differentiate")
        h, bonds, gamma, invstd, centre, nbr, bond_of_edge, kept, per_atom, d_terms = ctx.saved_tensors
        (n_atoms, k, a), n_edges = h.shape, len(centre)
        centres = _Centres(centre, n_atoms)
        grad = grad_out.view(n_atoms, k, 1, a)  # one row per centre atom, shared by f and c
        # sum of dy and of dy * xhat over the edges, from the per-atom sums (their memory is free after)
        sums = per_atom.view(2, n_atoms, k, 2, a).mul_(grad).sum(1).view(2, -1)
        scale = gamma * invstd
        if ctx.training:  # batch statistics: every edge's pre-activation moves BN1's mean and variance
            shift, slope = -scale * sums[0] / n_edges, -scale * sums[1] / n_edges
        scaled = torch.mul(grad, scale.view(k, 2, a), out=per_atom[0].view(n_atoms, k, 2, a))
        d_terms.zero_()  # the atom terms' memory, now their gradients
        d_per_bond = grad_out.new_zeros(len(bonds), len(gamma))  # summed per distinct bond row
        chunks = centres.chunks(len(gamma))
        d_bias = grad_out.new_empty(len(chunks), len(gamma))  # per chunk, added up in float64
        for i, s in enumerate(chunks):
            xhat, dy = kept[0, s], kept[1, s]
            centres.mul_to(dy.view(len(dy), k, 2, a), scaled, s)
            if ctx.training:
                dy.add_(shift).addcmul_(xhat, slope)
            d_per_bond.index_add_(0, bond_of_edge[s], dy)
            torch.sum(dy, 0, out=d_bias[i])
            centres.sum_into(d_terms[0], dy, s)
            d_terms[1].index_add_(0, nbr[s], dy)
        d_weight = torch.cat([torch.stack([d_terms[j][:, i * 2 * a:(i + 1) * 2 * a].t() @ h[:, i] for i in range(k)])
                              for j in (0, 1)] + [(d_per_bond.t() @ bonds).reshape(k, 2 * a, -1)], 2)
        return None, None, d_weight, d_bias.double().sum(0).float(), sums[1], sums[0], *[None] * 6


def distinct_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """The distinct rows of ``x`` and each row's index among them: ``rows[index] == x`` exactly.
    Rows are grouped by a float64 projection on a fixed random vector and each checked against its
    group's first row element by element: a row that differs from it only where the projection
    cannot see (a Gaussian bond feature of 1e-30) becomes a row of its own."""
    key = x.double() @ torch.randn(x.shape[1], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    _, index = torch.unique(key, return_inverse=True)
    first = torch.full((int(index.max()) + 1 if len(x) else 0,), len(x), dtype=torch.long)
    first.scatter_reduce_(0, index, torch.arange(len(x)), reduce="amin")
    differs = torch.nonzero((x.index_select(0, first[index]) != x).any(1)).flatten()
    index[differs] = len(first) + torch.arange(len(differs))
    first = torch.cat([first, differs])
    return x.index_select(0, first), index


def stacked_convs(convs: list[ConvLayer], h: Tensor, edge_index: Tensor, edge_attr: Tensor,
                  workspace: Workspace | None = None) -> Tensor:
    """``convs[i](h[:, i], edge_index, edge_attr)`` for every i at once: h (atoms, k, a) -> (atoms, k, a).

    The same maths as k ``ConvLayer`` calls (BatchNorm with batch statistics in training, running
    ones in eval, each expert's running statistics updated as its own layer would), with the k
    weight matrices stacked: the bond term is one matmul over the distinct bond feature rows (a
    crystal's symmetry repeats its distances: 9-17% of a batch's edges are distinct), and the
    per-bond work runs over all k experts in cache-sized chunks. Gradients reach each layer's own
    parameters through the stacking. ``workspace`` holds what a training step keeps for its
    backward pass (give the same one every step; None: fresh memory)."""
    nbr, centre = edge_index
    bn1, bn2 = [c.bn1 for c in convs], [c.bn2 for c in convs]
    training = bn1[0].training
    weight = torch.stack([c.fc_full.weight for c in convs])  # (k, 2a, 2a + b): [centre | neighbour | bond]
    stats = None if training else (torch.cat([b.running_mean for b in bn1]), torch.cat([b.running_var for b in bn1]))
    differentiable = torch.is_grad_enabled() and weight.requires_grad
    bonds, bond_of_edge = distinct_rows(edge_attr)
    summed, mean, var = _GatedEdgeSum.apply(
        h, bonds, weight, torch.cat([c.fc_full.bias for c in convs]), torch.cat([b.weight for b in bn1]),
        torch.cat([b.bias for b in bn1]), centre, nbr, bond_of_edge, stats, bn1[0].eps,
        (workspace or Workspace()) if differentiable else None)
    if training:
        _count_batch(bn1, mean, var, len(edge_attr))
    # BN2 over (atoms, k * a): torch's own batch norm on the stacked running statistics, copied back
    running = [torch.cat([b.running_mean for b in bn2]), torch.cat([b.running_var for b in bn2])]
    normed = F.batch_norm(summed, *running, torch.cat([b.weight for b in bn2]), torch.cat([b.bias for b in bn2]),
                          training, _momentum(bn2), bn2[0].eps)
    if training:
        with torch.no_grad():
            for i, bn in enumerate(bn2):
                bn.running_mean.copy_(running[0].view(len(bn2), -1)[i])
                bn.running_var.copy_(running[1].view(len(bn2), -1)[i])
                bn.num_batches_tracked.add_(1)
    return F.softplus(h + normed.view_as(h))


def _momentum(bns: list[nn.BatchNorm1d]) -> float:
    """The running statistics' update factor of this step, the same for every layer (their own:
    ``momentum``, or 1 / batches seen for a cumulative average)."""
    factors = {bn.momentum if bn.momentum is not None else 1.0 / (float(bn.num_batches_tracked) + 1) for bn in bns}
    if len(factors) != 1:
        raise ValueError(f"stacked convolutions need one batch-norm momentum; got {sorted(factors)}")
    return factors.pop()


@torch.no_grad()
def _count_batch(bns: list[nn.BatchNorm1d], mean: Tensor, var: Tensor, n: int) -> None:
    """What each BatchNorm1d does to its buffers in a training step: move the running mean and
    unbiased variance towards the batch's by its momentum, and count the batch."""
    m, width = _momentum(bns), len(mean) // len(bns)
    unbiased = var * (n / max(n - 1, 1))
    for i, bn in enumerate(bns):
        part = slice(i * width, (i + 1) * width)
        bn.running_mean.copy_(m * mean[part] + (1 - m) * bn.running_mean)
        bn.running_var.copy_(m * unbiased[part] + (1 - m) * bn.running_var)
        bn.num_batches_tracked.add_(1)
