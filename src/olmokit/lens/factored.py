"""``FactoredMatrix``: a low-rank product ``A @ B`` kept as its two factors.

Circuit matrices such as a head's OV (``W_V @ W_O``, ``d_model × d_model`` of rank ``d_head``) or QK
(``W_Q @ W_K.T``) are far cheaper to study as factors: the SVD, eigenvalues and norms of ``A @ B`` all
follow from ``mdim × mdim`` problems. The API follows TransformerLens's class of the same name (``AB``,
``BA``, ``S``, ``U``, ``Vh``, ``svd()``, ``eigenvalues``, ``norm()``, ``@`` with tensors and other
factored matrices, indexing over leading batch dimensions), so circuit code ports unchanged. Leading
dimensions (layers, heads) broadcast.
"""

from __future__ import annotations

from functools import cached_property

import torch

__all__ = ["FactoredMatrix"]


class FactoredMatrix:
    """``A [..., ldim, mdim] @ B [..., mdim, rdim]`` without forming the product."""

    def __init__(self, A: torch.Tensor, B: torch.Tensor):
        if A.shape[-1] != B.shape[-2]:
            raise ValueError(
                f"factor shapes do not chain: A {tuple(A.shape)} and B {tuple(B.shape)}"
            )
        if A.dim() < 2 or B.dim() < 2:
            raise ValueError("both factors need at least 2 dimensions (use x[:, None] for vectors)")
        batch = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2])
        self.A = A.broadcast_to(*batch, *A.shape[-2:])
        self.B = B.broadcast_to(*batch, *B.shape[-2:])
        self.ldim, self.mdim = A.shape[-2], A.shape[-1]
        self.rdim = B.shape[-1]
        self.has_leading_dims = len(batch) > 0
        self.shape = torch.Size((*batch, self.ldim, self.rdim))

    # ------------------------------------------------------------------ products
    def __matmul__(self, other: torch.Tensor | FactoredMatrix) -> FactoredMatrix | torch.Tensor:
        if isinstance(other, FactoredMatrix):
            return (self @ other.A) @ other.B
        if other.dim() == 1:  # matrix @ vector
            return (self.A @ (self.B @ other[..., None]))[..., 0]
        if other.shape[-2] != self.rdim:
            raise ValueError(f"cannot multiply {tuple(self.shape)} by {tuple(other.shape)}")
        # keep the smaller inner dimension as the factorisation point
        if other.shape[-1] >= self.mdim:
            return FactoredMatrix(self.A, self.B @ other)
        return FactoredMatrix(self.AB, other)

    def __rmatmul__(self, other: torch.Tensor) -> FactoredMatrix | torch.Tensor:
        if other.dim() == 1:
            return ((other[None] @ self.A) @ self.B)[..., 0, :]
        if other.shape[-1] != self.ldim:
            raise ValueError(f"cannot multiply {tuple(other.shape)} by {tuple(self.shape)}")
        if other.shape[-2] >= self.mdim:
            return FactoredMatrix(other @ self.A, self.B)
        return FactoredMatrix(other, self.AB)

    def __mul__(self, scalar: float | torch.Tensor) -> FactoredMatrix:
        if isinstance(scalar, torch.Tensor) and scalar.numel() != 1:
            raise ValueError("FactoredMatrix can only be multiplied by a scalar")
        return FactoredMatrix(self.A * scalar, self.B)

    __rmul__ = __mul__

    @property
    def AB(self) -> torch.Tensor:
        """The full product ``[..., ldim, rdim]``."""
        return self.A @ self.B

    @property
    def BA(self) -> torch.Tensor:
        """``B @ A`` ``[..., mdim, mdim]`` (only for square products): same nonzero eigenvalues as AB."""
        if self.rdim != self.ldim:
            raise ValueError(f"BA needs a square product, this one is {self.ldim}x{self.rdim}")
        return self.B @ self.A

    @property
    def T(self) -> FactoredMatrix:
        return FactoredMatrix(self.B.transpose(-2, -1), self.A.transpose(-2, -1))

    # ------------------------------------------------------------------ spectra
    @torch.no_grad()
    def svd(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(U [..., ldim, mdim], S [..., mdim], Vh [..., rdim, mdim])`` with ``AB = U diag(S) Vh.T``.

        (TransformerLens's convention: ``Vh`` holds the right singular vectors as *columns*.) Computed
        from the factors' thin SVDs and one ``mdim × mdim`` SVD.
        """
        return self._svd

    @cached_property
    def _svd(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        Ua, Sa, Vha = torch.linalg.svd(self.A, full_matrices=False)
        Ub, Sb, Vhb = torch.linalg.svd(self.B, full_matrices=False)
        middle = Sa[..., :, None] * (Vha @ Ub) * Sb[..., None, :]
        Um, Sm, Vhm = torch.linalg.svd(middle)
        U = Ua @ Um
        V = (Vhm @ Vhb).transpose(-2, -1)
        return U, Sm, V

    @property
    def U(self) -> torch.Tensor:
        return self.svd()[0]

    @property
    def S(self) -> torch.Tensor:
        return self.svd()[1]

    @property
    def Vh(self) -> torch.Tensor:
        return self.svd()[2]

    @property
    def eigenvalues(self) -> torch.Tensor:
        """Eigenvalues of ``AB`` that can be nonzero (those of ``BA``), complex ``[..., mdim]``."""
        return torch.linalg.eig(self.BA).eigenvalues

    def norm(self) -> torch.Tensor:
        """Frobenius norm of ``AB`` (from the singular values)."""
        return self.S.pow(2).sum(-1).sqrt()

    # ------------------------------------------------------------------ shape helpers
    def __getitem__(self, idx) -> FactoredMatrix:
        """Index the leading (batch) dimensions, e.g. ``OV[layer, head]``."""
        if not isinstance(idx, tuple):
            idx = (idx,)
        n_lead = len(self.shape) - 2
        if len(idx) > n_lead:
            raise IndexError(
                f"only the {n_lead} leading dimensions of a FactoredMatrix can be indexed"
            )
        return FactoredMatrix(self.A[idx], self.B[idx])

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def unsqueeze(self, k: int) -> FactoredMatrix:
        if k < 0:
            k += self.ndim - 1
        return FactoredMatrix(self.A.unsqueeze(k), self.B.unsqueeze(k))

    def collapse_l(self) -> torch.Tensor:
        """``S[:, None] * Vh.T`` ``[..., mdim, rdim]``: the product with the left basis factored out."""
        U, S, Vh = self.svd()
        return S[..., :, None] * Vh.transpose(-2, -1)

    def collapse_r(self) -> torch.Tensor:
        """``U * S`` ``[..., ldim, mdim]``: the product with the right basis factored out."""
        U, S, Vh = self.svd()
        return U * S[..., None, :]

    @property
    def pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.A, self.B

    def get_corner(self, k: int = 3) -> torch.Tensor:
        """Top-left ``k × k`` block of the product (of the first element of every leading dim)."""
        lead = (0,) * (self.ndim - 2)
        return (self.A[lead][:k] @ self.B[lead][:, :k]).detach()

    def __repr__(self) -> str:
        return f"FactoredMatrix: Shape({tuple(self.shape)}), Hidden Dim({self.mdim})"
