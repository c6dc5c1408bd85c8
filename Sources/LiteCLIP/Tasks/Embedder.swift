import Dispatch
import Foundation
import TensorIO

/// `liteclip embed`: L2-normalised embeddings for many images or texts, in input order,
/// batched; images are decoded and preprocessed on both cores before each batch runs.
public enum Embedder {
    public static let imageExtensions: Set<String> = ["jpg", "jpeg", "png"]

    /// Expands folders (sorted, non-recursive, by extension) and keeps files as given.
    public static func imageFiles(_ inputs: [String]) throws -> [String] {
        var out: [String] = []
        for p in inputs {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: p, isDirectory: &isDir) else {
                throw ImageError(file: p, detail: "no such file or folder")
            }
            if isDir.boolValue {
                let names = try FileManager.default.contentsOfDirectory(atPath: p).sorted()
                out += names.filter { imageExtensions.contains(($0 as NSString).pathExtension.lowercased()) }.map { (p as NSString).appendingPathComponent($0) }
            } else {
                out.append(p)
            }
        }
        return out
    }

    /// Embeddings `(N, D)` row-major for `files`; `progress(done, total)` after each batch.
    public static func images(_ files: [String], model: LiteCLIPModel, batchSize: Int,
                              progress: ((Int, Int) -> Void)? = nil) throws -> [Float] {
        let pre = ImagePreprocessor(model.preprocess)
        let s = model.preprocess.centerCrop, per = 3 * s * s
        var out: [Float] = []
        out.reserveCapacity(files.count * model.config.projectionDim)
        var start = 0
        while start < files.count {
            let batch = Array(files[start..<min(start + batchSize, files.count)])
            var pixels = [Float](repeating: 0, count: batch.count * per)
            var errors = [Error?](repeating: nil, count: batch.count)
            pixels.withUnsafeMutableBufferPointer { px in
                errors.withUnsafeMutableBufferPointer { errs in
                    let pp = px.baseAddress!, ep = errs
                    DispatchQueue.concurrentPerform(iterations: batch.count) { i in
                        do { pre.normalize(pre.resizeAndCrop(try ImageDecoder.decode(path: batch[i])), into: pp + i * per) }
                        catch { ep[i] = error }
                    }
                }
            }
            if let e = errors.compactMap({ $0 }).first { throw e }
            out += model.imageEmbeddings(pixels: pixels, batch: batch.count)
            start += batch.count
            progress?(start, files.count)
        }
        return out
    }

    public static func texts(_ texts: [String], model: LiteCLIPModel, batchSize: Int,
                             progress: ((Int, Int) -> Void)? = nil) -> [Float] {
        var out: [Float] = []
        var start = 0
        while start < texts.count {
            let batch = Array(texts[start..<min(start + batchSize, texts.count)])
            out += model.textEmbeddings(model.tokenizer.encodeBatch(batch))
            start += batch.count
            progress?(start, texts.count)
        }
        return out
    }
}
