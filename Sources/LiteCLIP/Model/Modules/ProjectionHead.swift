/// The seed's `ProjectionHead`: `x = proj(x); return x + ln(dropout(gelu(x)))`, one forward for
/// inference and training (dropout from the workspace; 0 at inference).
struct ProjectionHead {
    let proj: Linear              // proj: (D, in)
    let ln: LayerNorm             // ln: (D), eps 1e-5 (nn.LayerNorm default)

    init(_ s: ParameterScope, input: Int, dim: Int) throws {
        proj = try Linear(s.child("proj"), in: input, out: dim)
        ln = try LayerNorm(s.child("ln"), dim)
    }

    final class Cache {
        var x: Buffer?, y: Buffer?, xhat: Buffer?, rstd: Buffer?, mask: Buffer?
    }

    /// `(rows, in)` -> `(rows, D)`.
    func forward(_ x: Buffer, rows: Int, ws: Workspace, cache: Cache?) -> Buffer {
        let d = proj.weight.shape[0]
        let y = ws.zeros([rows, d]), a = ws.zeros([rows, d])
        Kernels.linear(x.data, rows: rows, weight: proj.weight, bias: proj.bias, into: y.data)
        Kernels.gelu(y.data, into: a.data, count: rows * d)
        let mask = ws.dropout(a, p: ws.hiddenDropout)
        let xhat = cache.map { _ in ws.zeros([rows, d]) }, rstd = cache.map { _ in ws.zeros([rows]) }
        Kernels.layerNormRowsForward(a.data, rows: rows, n: d, weight: ln.weight, bias: ln.bias, eps: 1e-5,
                                     xhat: xhat?.data, rstd: rstd?.data, into: a.data)
        let out = cache == nil ? y : ws.zeros([rows, d])   // the backward needs y
        for i in 0..<(rows * d) { out.data[i] = y.data[i] + a.data[i] }
        if let cache { (cache.x, cache.y, cache.xhat, cache.rstd, cache.mask) = (x, y, xhat, rstd, mask) }
        return out
    }

    /// dL/dinput from dL/dout.
    func backward(_ c: Cache, _ dOut: Buffer, grads: Gradients, ws: Workspace) -> Buffer {
        guard let x = c.x, let y = c.y, let xhat = c.xhat, let rstd = c.rstd else { preconditionFailure("backward without a forward cache") }
        let rows = y.shape[0], d = y.shape[1], n = x.shape[1]
        let dy = ws.zeros([rows, d]), da = ws.zeros([rows, d])
        dy.data.update(from: dOut.data, count: rows * d)                     // residual
        Kernels.layerNormRowsBackward(xhat: xhat.data, rstd: rstd.data, dy: dOut.data, rows: rows, n: d, weight: ln.weight,
                                      dWeight: grads.of(ln.weight), dBias: grads.of(ln.bias), dx: da.data)
        if let m = c.mask { Kernels.multiply(da.data, by: m.data, count: da.count) }
        Kernels.geluBackward(y.data, da.data, count: da.count)
        for i in 0..<(rows * d) { dy.data[i] += da.data[i] }
        let dx = ws.zeros([rows, n])
        Kernels.linearBackward(x: x.data, dy: dy.data, rows: rows, weight: proj.weight,
                               dWeight: grads.of(proj.weight), dBias: grads.of(proj.bias), dx: dx.data)
        return dx
    }
}
