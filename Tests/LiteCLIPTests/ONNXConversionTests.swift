import Foundation
import XCTest
@testable import LiteCLIP
@testable import TensorIO
import TestSupport

/// Both PyTorch exporters' files (golden/onnx/, made by golden/generate_onnx.py from
/// golden/liteclip2.pt) give the same parameters as the .pt, bit for bit, and the same model.
final class ONNXConversionTests: XCTestCase {
    static let files = ["onnx/liteclip2_torchscript.onnx", "onnx/liteclip2_dynamo.onnx"]

    func convert(_ rel: String) throws -> (Converter.Report, LiteCLIPFile) {
        var o = Converter.Options()
        o.vocabPath = Fixtures.vocab
        o.textConfigPath = Fixtures.golden("config.json")
        let out = Fixtures.tempDir() + "/onnx.lcw"
        let r = try Converter.convert(input: Fixtures.golden(rel), output: out, options: o)
        return (r, try LiteCLIPFile.open(out))
    }

    func testParametersEqualThePtBitForBit() throws {
        let want = Dictionary(uniqueKeysWithValues: Fixtures.tensors("liteclip2.pt").map { ($0["name"] as! String, $0) })
        for rel in Self.files {
            let (report, lcw) = try convert(rel)
            XCTAssertEqual(report.keyPrefix, "m.", rel)
            XCTAssertFalse(lcw.metadata.model.hasPooler, "both exporters drop BERT's unused pooler")
            XCTAssertEqual(lcw.tensors.count, 258, rel)
            var bad: [String] = []
            for t in lcw.tensors {
                guard let w = want[t.name] else { bad.append("\(t.name): not a .pt tensor"); continue }
                if try t.load().sha256() != w["sha256"] as! String || t.shape != w["shape"] as! [Int] { bad.append(t.name) }
            }
            XCTAssertTrue(bad.isEmpty, "\(rel): tensors differing from the .pt:\n" + bad.joined(separator: "\n"))
            let wantNames = Fixtures.tensors("liteclip2.pt").map { $0["name"] as! String }.filter { !$0.contains(".pooler.") }
            XCTAssertEqual(lcw.tensors.map(\.name), wantNames, "\(rel): canonical order")
        }
    }

    func testTorchScriptLayoutsAreReported() throws {
        let (report, _) = try convert("onnx/liteclip2_torchscript.onnx")
        XCTAssertTrue(report.notes.contains { $0.hasPrefix("m.image_encoder.backbone.stages.0.blocks.0.mlp.fc1.weight <- onnx::MatMul_") && $0.hasSuffix("(transposed)") }, report.notes.joined(separator: "\n"))
        XCTAssertTrue(report.notes.contains { $0.hasPrefix("m.image_encoder.backbone.stages.0.blocks.0.gamma <- onnx::Mul_") && $0.hasSuffix("(flattened)") })
        XCTAssertTrue(report.notes.contains { $0.hasPrefix("m.text_encoder.backbone.encoder.layer.3.attention.self.query.weight <- ") })
    }

    func testOnnxConvertedModelVerifiesAgainstPyTorch() throws {
        for rel in Self.files {
            let (_, lcw) = try convert(rel)
            let v = try Verification.run(model: try LiteCLIPModel(lcw), reference: Fixtures.golden("reference.safetensors"))
            XCTAssertTrue(v.passed, "\(rel):\n" + v.report)
        }
    }

    func testInspectListsTheGraphAndEveryInitializer() throws {
        let i = try Inspection.inspect(Fixtures.golden("onnx/liteclip2_torchscript.onnx"))
        XCTAssertEqual(i.format, .onnx)
        let model = try ONNXReader.read(ByteSource(mapping: Fixtures.golden("onnx/liteclip2_torchscript.onnx")))
        XCTAssertEqual(i.rows.filter { $0.constantNode == nil }.map(\.name), model.initializers.map(\.name))
        // The graph's Constant nodes' tensors are listed too, marked with their node.
        let constants = model.nodes.filter { n in
            guard n.opType == "Constant", case .tensor? = n.attributes["value"] else { return false }
            return true
        }
        XCTAssertEqual(i.rows.filter { $0.constantNode != nil }.map(\.constantNode!), constants.map(\.name))
        let text = try CLITests.run("liteclip", ["inspect", Fixtures.golden("onnx/liteclip2_torchscript.onnx")]).out
        XCTAssertTrue(text.contains("input: pixel_values f32"), text)
        XCTAssertTrue(text.contains("ops: "), text)
        XCTAssertFalse(i.onnx?.opCounts.isEmpty ?? true)
    }

    /// torch.onnx.export(dynamo=True) with its default optimisation folds the embedding lookups:
    /// refused unless asked, with the reason and the ways out, and nothing is written.
    func testDefaultOptimisedDynamoExportIsRefusedWithAdvice() throws {
        var o = Converter.Options()
        o.vocabPath = Fixtures.vocab
        let out = Fixtures.tempDir() + "/partial.lcw"
        XCTAssertThrowsError(try Converter.convert(input: Fixtures.golden("onnx/liteclip2_dynamo_optimized.onnx"), output: out, options: o)) { e in
            let m = e as? ModelError
            XCTAssertEqual(m?.code, .mapping, "\(e)")
            XCTAssertEqual(m?.unexpected.sorted(), ["embedding_1 [2, 128, 16]", "embedding_2 [1, 128, 16]"], "\(e)")
            XCTAssertTrue(m?.detail.contains("optimize=False") == true && m?.detail.contains("--allow-partial") == true, "\(e)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: out))
    }

    /// With --allow-partial: every parameter the file holds equals the .pt's bit for bit, the
    /// position embeddings' first 128 rows and the token-type row 0 too; the missing rows are
    /// recorded, the model is sized to what is there, and it verifies against PyTorch.
    func testAllowPartialRebuildsAnInferenceExactModel() throws {
        var o = Converter.Options()
        o.vocabPath = Fixtures.vocab
        o.textConfigPath = Fixtures.golden("config.json")
        o.allowPartial = true
        let out = Fixtures.tempDir() + "/partial.lcw"
        let report = try Converter.convert(input: Fixtures.golden("onnx/liteclip2_dynamo_optimized.onnx"), output: out, options: o)
        XCTAssertEqual(report.partial.count, 2, report.partial.joined(separator: "\n"))
        let lcw = try LiteCLIPFile.open(out)
        XCTAssertEqual(lcw.metadata.source.partial, report.partial)
        XCTAssertEqual(lcw.metadata.model.text.maxPositionEmbeddings, 128)
        XCTAssertEqual(lcw.metadata.model.text.typeVocabSize, 1)
        XCTAssertEqual(lcw.metadata.tokenizer.maxLength, 128)
        XCTAssertEqual(lcw.tensors.count, 258)

        let pt = Dictionary(uniqueKeysWithValues: try TensorFile.read(ByteSource(mapping: Fixtures.golden("liteclip2.pt"))).tensors.map { ($0.name, $0) })
        func bytes(_ t: Checkpoint.Tensor) throws -> [UInt8] { try t.load().withBytes { Array($0) } }
        var bad: [String] = []
        for t in lcw.tensors {
            let want = try XCTUnwrap(pt[t.name], t.name)
            let mine = try bytes(t), theirs = try bytes(want)
            switch t.name {
            case "text_encoder.backbone.embeddings.position_embeddings.weight", "text_encoder.backbone.embeddings.token_type_embeddings.weight":
                // The leading rows the file holds.
                if mine != Array(theirs.prefix(mine.count)) { bad.append("\(t.name): leading rows differ") }
            case "logit_scale":
                // Recovered as log(exp(x)): the float32 logarithm of PyTorch's exp.
                let a = mine.withUnsafeBytes { $0.loadUnaligned(as: Float.self) }, b = theirs.withUnsafeBytes { $0.loadUnaligned(as: Float.self) }
                if abs(a - b) > b.ulp { bad.append("logit_scale: \(a) vs \(b), \(abs(a - b) / b.ulp) ulp") }
            default:
                if mine != theirs || t.shape != want.shape { bad.append(t.name) }
            }
        }
        XCTAssertTrue(bad.isEmpty, "tensors differing from the .pt:\n" + bad.joined(separator: "\n"))
        let v = try Verification.run(model: try LiteCLIPModel(lcw), reference: Fixtures.golden("reference.safetensors"))
        XCTAssertTrue(v.passed, v.report)
    }

    func testNotLiteCLIPGraph() throws {
        XCTAssertThrowsError(try ONNXParameters.stateDict(from: ONNXReader.read(ByteSource(mapping: Fixtures.golden("onnx_cases/dtypes_raw.onnx"))))) {
            XCTAssertEqual(($0 as? ModelError)?.code, .notLiteCLIP, "\($0)")
        }
    }
}

/// The mapping rules on small synthetic graphs: cases the golden exports do not produce.
final class ONNXMappingRuleTests: XCTestCase {
    func tensor(_ name: String, _ shape: [Int], _ values: [Float]? = nil) -> Checkpoint.Tensor {
        let n = shape.reduce(1, *)
        let v = values ?? (0..<n).map { Float($0) }
        return Checkpoint.Tensor(name: name, dtype: .f32, shape: shape, origin: "test") {
            TensorBytes(owning: v.flatMap { withUnsafeBytes(of: $0.bitPattern.littleEndian) { Array($0) } })
        }
    }

    func node(_ op: String, _ name: String, _ inputs: [String], scopes: String? = nil) -> ONNXNode {
        ONNXNode(opType: op, name: name, domain: "", inputs: inputs, outputs: [name + ":0"], attributes: [:],
                 metadataProps: scopes.map { ["pkg.torch.onnx.name_scopes": $0] } ?? [:])
    }

    func model(_ inits: [Checkpoint.Tensor], _ nodes: [ONNXNode]) -> ONNXModel {
        ONNXModel(file: "synthetic.onnx", irVersion: 8, producerName: "pytorch", producerVersion: "2.15", domain: "", modelVersion: 0,
                  opsets: [("", 20)], metadataProps: [:],
                  graph: ONNXGraph(name: "g", nodes: nodes, initializers: inits, inputs: [], outputs: []),
                  source: ByteSource(copying: [UInt8](), name: "synthetic.onnx"))
    }

    func values(_ t: Checkpoint.Tensor) throws -> [Float] { try t.load().withBytes { Array($0.bindMemory(to: Float.self)) } }

    /// TorchScript de-duplicates identical tensors: one initializer, two consumers, two parameters.
    func testOneInitializerPlacesEveryParameterItFeeds() throws {
        let stem = tensor("m.image_encoder.backbone.stem.0.weight", [8, 3, 4, 4])
        let shared = tensor("onnx::MatMul_7", [2, 3])      // stored (in, out)
        let b = "/image_encoder/backbone/stages/stages.0/blocks/"
        let r = try ONNXParameters.stateDict(from: model([stem, shared], [
            node("MatMul", b + "blocks.0/mlp/fc1/MatMul", ["x", "onnx::MatMul_7"]),
            node("MatMul", b + "blocks.1/mlp/fc1/MatMul", ["y", "onnx::MatMul_7"]),
        ]))
        let names = r.checkpoint.tensors.map(\.name)
        XCTAssertEqual(names, ["m.image_encoder.backbone.stem.0.weight",
                               "m.image_encoder.backbone.stages.0.blocks.0.mlp.fc1.weight",
                               "m.image_encoder.backbone.stages.0.blocks.1.mlp.fc1.weight"])
        for t in r.checkpoint.tensors.dropFirst() {
            XCTAssertEqual(t.shape, [3, 2])
            XCTAssertEqual(try values(t), [0, 3, 1, 4, 2, 5], "transposed back to (out, in)")
        }
    }

    func testDynamoScopesGammaAndFoldedLogitScale() throws {
        let stem = tensor("m.image_encoder.backbone.stem.0.weight", [8, 3, 4, 4])
        let view = tensor("view_3", [1, 4, 1, 1], [1, 2, 3, 4])
        let exp = tensor("exp", [], [expf(2.65926)])
        let r = try ONNXParameters.stateDict(from: model([stem, view, exp], [
            node("Mul", "node_mul_3", ["a", "view_3"], scopes: "['', 'm.image_encoder', 'm.image_encoder.backbone.stages.1.blocks.0', 'mul_3']"),
            node("Mul", "node_mul_19", ["exp", "b"]),
        ]))
        let byName = Dictionary(uniqueKeysWithValues: r.checkpoint.tensors.map { ($0.name, $0) })
        let gamma = try XCTUnwrap(byName["m.image_encoder.backbone.stages.1.blocks.0.gamma"])
        XCTAssertEqual(gamma.shape, [4])
        XCTAssertEqual(try values(gamma), [1, 2, 3, 4])
        let scale = try XCTUnwrap(byName["m.logit_scale"])
        XCTAssertEqual(try values(scale)[0], logf(expf(2.65926)))
        XCTAssertTrue(r.placements.contains { $0.parameter == "m.logit_scale" && $0.layout == .exponentiated })
    }

    /// The folded lookups are told apart by content, whatever their names and order; a batch of
    /// one works; lookups that cannot be told apart are an error naming them.
    func testFoldedLookupsAreToldApartByContent() throws {
        let stem = tensor("m.image_encoder.backbone.stem.0.weight", [8, 3, 4, 4])
        let scope = "['', 'm.text_encoder', 'm.text_encoder.backbone', 'm.text_encoder.backbone.embeddings', 'add_1']"
        let positions = tensor("c_a", [1, 3, 2], [1, 2, 3, 4, 5, 6])
        let typeZero = tensor("c_b", [1, 3, 2], [7, 8, 7, 8, 7, 8])
        let nodes = [node("Add", "n1", ["x", "c_b"], scopes: scope), node("Add", "n2", ["y", "c_a"], scopes: scope)]
        let r = try ONNXParameters.stateDict(from: model([stem, typeZero, positions], nodes), allowPartial: true)
        let byName = Dictionary(uniqueKeysWithValues: r.checkpoint.tensors.map { ($0.name, $0) })
        let p = try XCTUnwrap(byName["m.text_encoder.backbone.embeddings.position_embeddings.weight"])
        XCTAssertEqual(p.shape, [3, 2])
        XCTAssertEqual(try values(p), [1, 2, 3, 4, 5, 6])
        let t = try XCTUnwrap(byName["m.text_encoder.backbone.embeddings.token_type_embeddings.weight"])
        XCTAssertEqual(t.shape, [1, 2])
        XCTAssertEqual(try values(t), [7, 8])
        XCTAssertEqual(r.partialPositions, 3)
        XCTAssertEqual(r.missing.count, 2)

        let alsoConstant = tensor("c_a", [1, 3, 2], [1, 2, 1, 2, 1, 2])
        XCTAssertThrowsError(try ONNXParameters.stateDict(from: model([stem, typeZero, alsoConstant], nodes), allowPartial: true)) { e in
            XCTAssertTrue((e as? ModelError)?.detail.contains("cannot rebuild the folded embedding lookups") == true, "\(e)")
            XCTAssertEqual((e as? ModelError)?.unexpected.sorted(), ["c_a [1, 3, 2]", "c_b [1, 3, 2]"])
        }
        // Only the token types folded (the full-size model: the position table is above the
        // optimiser's folding size limit and stays a parameter).
        let positionTable = tensor("m.text_encoder.backbone.embeddings.position_embeddings.weight", [5, 2])
        let onlyTypes = try ONNXParameters.stateDict(from: model([stem, typeZero, positionTable], [nodes[0]]), allowPartial: true)
        XCTAssertEqual(onlyTypes.partialPositions, nil)
        XCTAssertEqual(onlyTypes.partialTokenTypes, 1)
        XCTAssertEqual(onlyTypes.missing.count, 1)
        XCTAssertEqual(Set(onlyTypes.checkpoint.tensors.map(\.name)), ["m.image_encoder.backbone.stem.0.weight",
            "m.text_encoder.backbone.embeddings.position_embeddings.weight", "m.text_encoder.backbone.embeddings.token_type_embeddings.weight"])
        XCTAssertThrowsError(try ONNXParameters.stateDict(from: model([stem, positions, positionTable], [nodes[1]]), allowPartial: true)) { e in
            XCTAssertTrue((e as? ModelError)?.detail.contains("should repeat one row") == true, "\(e)")
        }
        let batchDiffers = tensor("c_a", [2, 3, 1], [1, 2, 3, 1, 2, 4])
        XCTAssertThrowsError(try ONNXParameters.stateDict(from: model([stem, typeZero, batchDiffers], nodes), allowPartial: true)) { e in
            XCTAssertTrue((e as? ModelError)?.detail.contains("differs across the batch") == true, "\(e)")
        }
    }

    func testDynamoNameScopesEndWithTheNodeName() {
        let n = node("MatMul", "node_MatMul_3", ["x", "val_5"], scopes: "['', 'm.text_encoder', 'm.text_encoder.backbone.encoder.layer.0.attention.self.query', 'linear_3']")
        XCTAssertEqual(ONNXParameters.moduleScope(n, prefix: "m."), "m.text_encoder.backbone.encoder.layer.0.attention.self.query")
        XCTAssertEqual(ONNXParameters.pythonStringList("['', 'a.b', \"c\"]"), ["", "a.b", "c"])
    }

    func testUnplaceableInitializersAreListedAndConstantsRecognised() throws {
        let stem = tensor("m.image_encoder.backbone.stem.0.weight", [8, 3, 4, 4])
        let folded = tensor("embedding_2", [1, 128, 16])
        let shapeConst = Checkpoint.Tensor(name: "onnx::Reshape_9", dtype: .i64, shape: [2], origin: "test") { TensorBytes(owning: [UInt8](repeating: 0, count: 16)) }
        let half = tensor("val_1", [], [0.5])
        // Anywhere but inside BERT's embeddings: just unplaceable, listed.
        XCTAssertThrowsError(try ONNXParameters.stateDict(from: model([stem, folded, shapeConst, half], [node("Add", "node_add", ["e", "embedding_2"])]))) { e in
            let m = e as? ModelError
            XCTAssertEqual(m?.unexpected, ["embedding_2 [1, 128, 16]"], "\(e)")
            XCTAssertFalse(m?.detail.contains("optimize=False") == true, "\(e)")
        }
        // Added inside the embeddings module: a folded lookup, explained; with --allow-partial a
        // lone one is still an error (two are needed to rebuild).
        let scope = "['', 'm.text_encoder', 'm.text_encoder.backbone', 'm.text_encoder.backbone.embeddings', 'add_20']"
        let g = model([stem, folded, shapeConst, half], [node("Add", "node_add", ["e", "embedding_2"], scopes: scope)])
        XCTAssertThrowsError(try ONNXParameters.stateDict(from: g)) { e in
            XCTAssertEqual((e as? ModelError)?.unexpected, ["embedding_2 [1, 128, 16]"], "\(e)")
            XCTAssertTrue((e as? ModelError)?.detail.contains("optimize=False") == true, "\(e)")
        }
        XCTAssertThrowsError(try ONNXParameters.stateDict(from: g, allowPartial: true)) { e in
            XCTAssertTrue((e as? ModelError)?.detail.contains("1 folded (B, S, H) lookups in text_encoder.backbone.embeddings but 2 embedding parameters absent") == true, "\(e)")
        }
        let ok = try ONNXParameters.stateDict(from: model([stem, shapeConst, half], []))
        XCTAssertEqual(ok.constants, ["onnx::Reshape_9", "val_1"])
    }
}
