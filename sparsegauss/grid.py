"""Grid stencils and the linear map θ → Λ(θ) with a fixed sparse pattern.

Pixel ``(r, c)`` of an ``H × W`` image is index ``r * W + c`` (row-major, as MNIST
flattens its images). A pixel couples to its 4 or 8 grid neighbours. Each coupling is
described once, by the pixel that owns it and a *half-stencil offset* ``(dr, dc)``: the
pair ``(p, p + δ)`` with flat shift ``δ = dr * W + dc > 0``.

Everything the library computes about Λ lives in one *stencil layout*: an array ``F`` of
shape ``(n_terms, D)`` where row 0 is the diagonal ``Λ_pp`` and row ``k ≥ 1`` holds
``Λ_{p, p+δ_k}`` at position ``p`` (zero where the neighbour falls off the grid). The
same layout carries the data's pattern second moments and the entries of ``Σ = Λ⁻¹`` on
the pattern, so likelihood gradients are element-wise products followed by
:meth:`GridParameterization.adjoint`. The layout is image-shaped: ``F[k].reshape(H, W)``
is a picture of the couplings along offset ``k``.
"""

import numpy as np
import scipy.sparse as sp

__all__ = ["GridParameterization", "STENCIL_OFFSETS", "TYINGS"]

#: Half-stencil offsets ``(dr, dc)`` per stencil; the full stencil adds their negatives.
STENCIL_OFFSETS = {
    4: ((0, 1), (1, 0)),
    8: ((0, 1), (1, 0), (1, 1), (1, -1)),
}

#: ``"untied"``: one parameter per pixel and per edge; ``"tied"``: one per stencil term.
TYINGS = ("untied", "tied")

_TERM_NAMES = {(0, 0): "diagonal", (0, 1): "horizontal", (1, 0): "vertical",
               (1, 1): "diagonal down-right", (1, -1): "diagonal down-left"}


def check_grid_shape(shape, owner="GridGaussian"):
    """Return ``shape`` as a tuple ``(H, W)`` of positive ints, or raise ``ValueError``."""
    try:
        height, width = (int(s) for s in shape)
        ok = all(float(s) == int(s) for s in shape)
    except (TypeError, ValueError):
        ok = False
    if not ok or height < 1 or width < 1:
        raise ValueError(
            f"The 'shape' parameter of {owner} must be a pair (H, W) of integers >= 1. "
            f"Got {shape!r} instead.")
    return height, width


class GridParameterization:
    """The linear map from parameters θ to a sparse grid precision matrix Λ(θ).

    Parameters
    ----------
    shape : tuple of int
        Grid shape ``(H, W)``; ``D = H * W`` pixels.
    stencil : {4, 8}, default=4
        Neighbourhood: 4 (horizontal and vertical) or 8 (plus both diagonals).
    tying : {"untied", "tied"}, default="untied"
        ``"untied"``: one parameter per pixel (the diagonal) and one per edge, e.g.
        ``784 + 1512`` for a 28×28 grid with 4 neighbours. ``"tied"``: a stationary model
        with one diagonal value and one value per half-stencil offset.

    Attributes
    ----------
    offsets : tuple of (int, int)
        Offsets of the stencil terms; term 0 is ``(0, 0)``, the diagonal.
    shifts : ndarray of int64, shape (n_terms,)
        Flat index shift ``δ_k = dr * W + dc`` of each term.
    valid : ndarray of bool, shape (n_terms, D)
        Whether the pair ``(p, p + δ_k)`` lies inside the grid.
    multiplicity : ndarray of float, shape (n_terms,)
        How often a term's value appears in Λ: 1 on the diagonal, 2 for an edge (once in
        each triangle), so that ``xᵀΛx = Σ_k m_k Σ_p F[k, p] x_p x_{p+δ_k}``.
    n_params : int
        Length of θ.

    Notes
    -----
    Λ(θ) = Σ_k θ_k A_k with fixed symmetric 0/1 matrices A_k, so for any scalar
    function of Λ the gradient is ``∂f/∂θ_k = Σ_{(p,q) ∈ pattern} (∂f/∂Λ_pq) (A_k)_pq``;
    in the stencil layout that is ``adjoint(multiplicity[:, None] * G)`` where
    ``G[k, p] = ∂f/∂Λ_{p, p+δ_k}`` for a symmetric derivative.

    Examples
    --------
    >>> from sparsegauss.grid import GridParameterization
    >>> grid = GridParameterization((28, 28), stencil=4)
    >>> grid.n_params
    2296
    """

    def __init__(self, shape, stencil=4, tying="untied"):
        self.shape = check_grid_shape(shape, owner="GridParameterization")
        if stencil not in STENCIL_OFFSETS:
            raise ValueError("The 'stencil' parameter of GridParameterization must be 4 or 8. "
                             f"Got {stencil!r} instead.")
        if tying not in TYINGS:
            raise ValueError("The 'tying' parameter of GridParameterization must be one of "
                             f"{TYINGS}. Got {tying!r} instead.")
        self.stencil = int(stencil)
        self.tying = tying
        height, width = self.shape
        self.n_pixels = height * width
        self.offsets = ((0, 0),) + STENCIL_OFFSETS[self.stencil]
        self.n_terms = len(self.offsets)
        self.shifts = np.array([dr * width + dc for dr, dc in self.offsets], dtype=np.int64)
        self.multiplicity = np.array([1.0] + [2.0] * (self.n_terms - 1))
        self.term_names = tuple(_TERM_NAMES[o] for o in self.offsets)

        rows, cols = np.divmod(np.arange(self.n_pixels), width)
        self.valid = np.array([(rows + dr >= 0) & (rows + dr < height)
                               & (cols + dc >= 0) & (cols + dc < width)
                               for dr, dc in self.offsets])
        # Flat positions of the valid stencil entries, term-major, and their parameter.
        self._valid_flat = np.flatnonzero(self.valid.ravel())
        if tying == "untied":
            self._param_of_valid = np.arange(self._valid_flat.size)
        else:
            # One parameter per term that has at least one pair on the grid (a 1×W grid
            # has no vertical edges, so no vertical parameter).
            terms = self._valid_flat // self.n_pixels
            _, self._param_of_valid = np.unique(terms, return_inverse=True)
        self.n_params = int(self._param_of_valid[-1]) + 1
        self._param_counts = np.bincount(self._param_of_valid, minlength=self.n_params)
        self._build_pattern()

    def __repr__(self):
        return (f"GridParameterization(shape={self.shape}, stencil={self.stencil}, "
                f"tying={self.tying!r})")

    # -- the pattern ---------------------------------------------------------------
    def _build_pattern(self):
        """Build the full symmetric CSC pattern and where each entry's value comes from."""
        terms, owners = np.divmod(self._valid_flat, self.n_pixels)
        partners = owners + self.shifts[terms]
        is_edge = terms > 0
        rows = np.concatenate([owners, partners[is_edge]])
        cols = np.concatenate([partners, owners[is_edge]])
        source = np.concatenate([self._valid_flat, self._valid_flat[is_edge]])
        order = np.lexsort((rows, cols))
        counts = np.bincount(cols, minlength=self.n_pixels)
        self._indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
        self._indices = rows[order].astype(np.int32)
        data_source = source[order]
        # θ's index of each stored value (one gather from θ; every source is valid).
        param_of_flat = np.zeros(self.n_terms * self.n_pixels, dtype=np.int64)
        param_of_flat[self._valid_flat] = self._param_of_valid
        self._data_param = param_of_flat[data_source]
        self.nnz = int(self._indices.size)

    @property
    def pattern(self):
        """Λ's sparsity pattern as a CSC matrix of ones (both triangles)."""
        return sp.csc_matrix((np.ones(self.nnz), self._indices.copy(), self._indptr.copy()),
                             shape=(self.n_pixels, self.n_pixels))

    # -- θ ↔ stencil layout ------------------------------------------------------------
    def check_theta(self, theta):
        """Return θ as a float64 vector of length ``n_params`` or raise ``ValueError``."""
        theta = np.asarray(theta, dtype=np.float64)
        if theta.shape != (self.n_params,):
            raise ValueError(f"theta must have shape ({self.n_params},) for {self!r}. "
                             f"Got shape {theta.shape} instead.")
        return theta

    def fields(self, theta):
        """Stencil layout of Λ(θ): array ``F`` of shape ``(n_terms, D)``, zero off-grid."""
        theta = self.check_theta(theta)
        out = np.zeros(self.n_terms * self.n_pixels)
        out[self._valid_flat] = theta if self.tying == "untied" else theta[self._param_of_valid]
        return out.reshape(self.n_terms, self.n_pixels)

    def adjoint(self, fields):
        """Transpose of :meth:`fields`: sum a stencil-layout array into parameter space.

        Parameters
        ----------
        fields : ndarray, shape (n_terms, D)

        Returns
        -------
        ndarray, shape (n_params,)
            ``out[j] = Σ_{(k, p) : param(k, p) = j} fields[k, p]``.
        """
        values = np.asarray(fields, dtype=np.float64).reshape(-1)[self._valid_flat]
        return self.adjoint_pairs(values)

    def project(self, fields):
        """Least-squares θ whose :meth:`fields` are closest to ``fields`` (a mean per tie)."""
        return self.adjoint(fields) / self._param_counts

    # -- θ → Λ ------------------------------------------------------------------------
    def precision_data(self, theta):
        """Values of Λ(θ) in the order of the CSC pattern (O(nnz), no Python loop)."""
        return self.check_theta(theta)[self._data_param]

    def precision(self, theta):
        """Λ(θ) as a ``scipy.sparse`` CSC matrix with sorted indices (both triangles)."""
        return self._csc(self.precision_data(theta), copy=True)

    def _csc(self, data, copy=False):
        indices, indptr = ((self._indices.copy(), self._indptr.copy()) if copy
                           else (self._indices, self._indptr))
        matrix = sp.csc_matrix((data, indices, indptr),
                               shape=(self.n_pixels, self.n_pixels), copy=False)
        matrix.has_sorted_indices = True
        return matrix

    def theta_from_precision(self, precision):
        """Read θ back from a matrix on this pattern (a mean over each tie)."""
        precision = sp.csr_matrix(precision)
        if precision.shape != (self.n_pixels, self.n_pixels):
            raise ValueError(f"precision must have shape ({self.n_pixels}, {self.n_pixels}). "
                             f"Got {precision.shape} instead.")
        fields = np.zeros((self.n_terms, self.n_pixels))
        owners = np.arange(self.n_pixels)
        for k, shift in enumerate(self.shifts):
            ok = self.valid[k]
            fields[k, ok] = np.asarray(precision[owners[ok], owners[ok] + shift]).ravel()
        return self.project(fields)

    def outer_fields(self, values):
        """Stencil layout of the rank-one matrix ``v vᵀ``: ``out[k, p] = v_p v_{p+δ_k}``."""
        values = np.asarray(values, dtype=np.float64)
        owners, partners = self.pair_indices()
        return self.scatter_pairs(values[owners] * values[partners])

    def adjoint_pairs(self, values):
        """:meth:`adjoint` of values given in :meth:`pair_indices` order."""
        if self.tying == "untied":
            # One parameter per pair, in this order: the sum is the values themselves
            # (the bincount was about 3 µs of the 11.6 µs adjoint on MNIST's grid).
            return np.array(values, dtype=np.float64)
        return np.bincount(self._param_of_valid, weights=values, minlength=self.n_params)

    def pair_terms(self):
        """Stencil term ``k`` of each pair of :meth:`pair_indices`."""
        return self._valid_flat // self.n_pixels

    def pair_indices(self):
        """Rows and columns ``(p, p + δ_k)`` of all valid stencil entries, term-major."""
        terms, owners = np.divmod(self._valid_flat, self.n_pixels)
        return owners, owners + self.shifts[terms]

    def scatter_pairs(self, values):
        """Place values given in :meth:`pair_indices` order into the stencil layout."""
        out = np.zeros(self.n_terms * self.n_pixels)
        out[self._valid_flat] = values
        return out.reshape(self.n_terms, self.n_pixels)
