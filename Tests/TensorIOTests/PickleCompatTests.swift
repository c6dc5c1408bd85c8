import Foundation
import XCTest
@testable import TensorIO
import TestSupport

/// Issue 13: Python 2 and text-protocol pickles (protocols 0-2), and globals that are not on the
/// allowlist kept as inert placeholders. The golden files come from golden/generate_pickle_cases.py,
/// which reads each one back with Python's own unpickler (encoding='utf-8', as torch.load passes
/// it) and writes what Python decoded to golden/cases/pickle/expected.json.
final class PickleCompatTests: XCTestCase {
    static let dir = Fixtures.golden("cases/pickle")
    static let expected: [String: Any] = {
        let data = FileManager.default.contents(atPath: dir + "/expected.json")!
        return (try! JSONSerialization.jsonObject(with: data) as! [String: Any])["cases"] as! [String: Any]
    }()

    func run(_ p: PickleBuilder, _ limits: PickleMachine.Limits = .init()) throws -> PyValue {
        try p.bytes.withUnsafeBytes { buf in
            var m = PickleMachine(data: buf, file: "crafted.pkl", entry: "data.pkl", limits: limits)
            return try m.run()
        }
    }

    func machine(_ p: PickleBuilder) throws -> (PyValue, PickleMachine) {
        try p.bytes.withUnsafeBytes { buf in
            var m = PickleMachine(data: buf, file: "crafted.pkl", entry: "data.pkl")
            let v = try m.run()
            return (v, m)
        }
    }

    /// The five pickles of a legacy file, read as TorchReader.readLegacy reads them.
    func legacyPickles(_ path: String) throws -> [(PyValue, PickleMachine)] {
        let bytes = [UInt8](try XCTUnwrap(FileManager.default.contents(atPath: path)))
        return try bytes.withUnsafeBytes { b in
            var pos = 0
            var out: [(PyValue, PickleMachine)] = []
            for i in 0..<5 {
                var m = PickleMachine(data: UnsafeRawBufferPointer(rebasing: b[pos...]), file: path, entry: "legacy pickle \(i)")
                out.append((try m.run(requireEnd: false), m))
                pos += m.consumed
            }
            return out
        }
    }

    // MARK: - Golden files through TensorFile.read (what `liteclip inspect` does)

    func testGoldenFilesReadWithEveryValueAsPythonDecodedIt() throws {
        var checked = 0
        for (name, c) in Self.expected.sorted(by: { $0.key < $1.key }) {
            let c = c as! [String: Any]
            guard let want = c["tensors"] as? [[String: Any]] else { continue }
            let ckpt = try TensorFile.read(try ByteSource(mapping: Self.dir + "/" + name))
            XCTAssertEqual(ckpt.format, .torchLegacy, name)
            XCTAssertEqual(ckpt.tensors.count, want.count, name)
            for w in want {
                let key = w["name"] as! String
                // The tensor name is the state-dict key, or its dotted path from the top of the file.
                guard let t = ckpt.tensors.first(where: { $0.name == key || $0.name.hasSuffix("." + key) }) else {
                    XCTFail("\(name): no tensor '\(key)' in \(ckpt.tensors.map(\.name))"); continue
                }
                XCTAssertEqual(t.dtype.rawValue, w["dtype"] as? String, "\(name) \(key)")
                XCTAssertEqual(t.shape, w["shape"] as? [Int], "\(name) \(key)")
                let got = try values(t.load(), t.dtype)
                let expect = (w["values"] as! [NSNumber]).map { $0.doubleValue }
                XCTAssertEqual(got, expect, "\(name) \(key)")
                checked += 1
            }
            let locations = Set(want.map { $0["location"] as! String }).sorted().joined(separator: ",")
            XCTAssertEqual(ckpt.metadata["storage_locations"], locations, name)
        }
        XCTAssertEqual(checked, 7 + 2 + 2, "every tensor of py2_binary, py2_text and lightning_like")
    }

    /// Values Python decoded from the same pickles: sys_info, the text-protocol values, the
    /// placeholder objects with their arguments and state, and the placeholder names.
    func testGoldenPickleValuesMatchPython() throws {
        for name in ["py2_binary.pt", "py2_text.pt", "lightning_like.pt"] {
            let c = Self.expected[name] as! [String: Any]
            let pickles = try legacyPickles(Self.dir + "/" + name)
            guard case .bigInt(let magic) = pickles[0].0 else { return XCTFail("\(name): magic") }
            XCTAssertEqual(magic, TorchReader.legacyMagic, name)
            XCTAssertEqual(try canonical(render(pickles[2].0)), try canonical(c["sys_info"]!), "\(name) sys_info")
            let (obj, m) = pickles[3]
            XCTAssertEqual(m.placeholderNames.sorted(), c["placeholders"] as? [String], name)
            guard case .dict(let top) = obj else { return XCTFail("\(name): top level") }
            if let meta = c["meta"] {
                XCTAssertEqual(try canonical(render(try XCTUnwrap(top.value(forKey: "meta")))), try canonical(meta), "\(name) meta")
            }
            if let hp = c["hyper_parameters"] {
                XCTAssertEqual(try canonical(render(try XCTUnwrap(top.value(forKey: "hyper_parameters")))), try canonical(hp), "\(name) hyper_parameters")
            }
            // The storage key list is read as plain strings, whatever opcode wrote them.
            guard case .list(let keys) = pickles[4].0 else { return XCTFail("\(name): keys") }
            XCTAssertEqual(keys.items.compactMap(\.keyText).sorted(), m.storages.keys.sorted(), name)
        }
    }

    func testGoldenHostileFilesAreRefusedWithTheFileAndPlace() throws {
        var n = 0
        for (name, c) in Self.expected.sorted(by: { $0.key < $1.key }) {
            guard let code = (c as! [String: Any])["error"] as? String else { continue }
            let want = try XCTUnwrap(ReadError.Code(rawValue: code), name)
            let path = Self.dir + "/" + name
            assertReadError(want, name) { try TensorFile.read(try ByteSource(mapping: path)) }
            do { _ = try TensorFile.read(try ByteSource(mapping: path)) } catch let e as ReadError {
                XCTAssertTrue(e.file.hasSuffix(name), "\(name): \(e)")
                XCTAssertTrue(e.place.contains("@ byte"), "\(name): the error names the place: \(e)")
            }
            n += 1
        }
        XCTAssertEqual(n, 8)
    }

    // MARK: - Python 2 strings

    func testPython2StringsDecodeAsTorchLoadDecodesThem() throws {
        var p = PickleBuilder()
        p.emptyList(); p.mark()
        p.op(0x55, 3); p.bytes += Array("abc".utf8)                          // SHORT_BINSTRING
        p.op(0x54); p.bytes += le32(5); p.bytes += [0x63, 0x61, 0x66, 0xC3, 0xA9]   // BINSTRING "café" (UTF-8)
        p.op(0x55, 0)                                                        // empty
        p.op(0x65); p.stop()
        guard case .list(let l) = try run(p) else { return XCTFail() }
        XCTAssertEqual(l.items.compactMap(\.keyText), ["abc", "café", ""])

        var bad = PickleBuilder()   // Latin-1 bytes: torch.load's encoding='utf-8' fails, so do we
        bad.op(0x55, 4); bad.bytes += [0x63, 0x61, 0x66, 0xE9]; bad.stop()
        assertReadError(.malformedPickle, "latin-1 str") { try run(bad) }
        XCTAssertThrowsError(try run(bad)) { XCTAssertTrue("\($0)".contains("encoding='utf-8'"), "\($0)") }
        var neg = PickleBuilder()
        neg.op(0x54); neg.bytes += le32(0xFFFF_FFFF); neg.stop()
        assertReadError(.malformedPickle, "negative BINSTRING length") { try run(neg) }
        var long = PickleBuilder()
        long.op(0x54); long.bytes += le32(1000); long.bytes += Array("abc".utf8)
        assertReadError(.truncated, "BINSTRING past the end") { try run(long) }
    }

    func testTextStringsAndUnicode() throws {
        func text(_ op: UInt8, _ arg: [UInt8]) throws -> PyValue {
            var p = PickleBuilder(); p.op(op); p.bytes += arg + [0x0A]; p.stop()
            return try run(p)
        }
        func string(_ arg: String) throws -> String? { try text(0x53, Array(arg.utf8)).keyText }
        XCTAssertEqual(try string("'abc'"), "abc")
        XCTAssertEqual(try string("\"it's\""), "it's")
        XCTAssertEqual(try string(#"'a\x41\101\n\t\r\\\'\"\q\b\f\v\a'"#), "aAA\n\t\r\\'\"\\q\u{8}\u{C}\u{B}\u{7}")
        XCTAssertEqual(try string(#"'\xc3\xa9'"#), "é")                        // UTF-8 bytes, escaped
        XCTAssertEqual(try string(#"'\7\77x\303\251'"#), "\u{7}?xé")                   // octal escapes
        assertReadError(.malformedPickle, "\\777 is the byte 0xff, not UTF-8") { try string(#"'\777'"#) }
        assertReadError(.malformedPickle, "unquoted") { try text(0x53, Array("abc".utf8)) }
        assertReadError(.malformedPickle, "mismatched quotes") { try text(0x53, Array("'abc\"".utf8)) }
        assertReadError(.malformedPickle, "trailing backslash") { try text(0x53, Array(#"'ab\'"#.utf8)) }
        assertReadError(.malformedPickle, "bad \\x") { try text(0x53, Array(#"'\xZ1'"#.utf8)) }
        assertReadError(.malformedPickle, "\\xff is not UTF-8") { try text(0x53, Array(#"'\xff'"#.utf8)) }
        var noNewline = PickleBuilder(); noNewline.op(0x53); noNewline.bytes += Array("'abc'".utf8)
        assertReadError(.truncated, "no newline") { try run(noNewline) }

        func unicode(_ raw: [UInt8]) throws -> String? { try text(0x56, raw).keyText }
        XCTAssertEqual(try unicode(Array(#"caf\u00e9 \u4e2d\U0001f600"#.utf8)), "café 中😀")
        XCTAssertEqual(try unicode([0x63, 0xE9]), "cé")                       // raw bytes are Latin-1
        XCTAssertEqual(try unicode(Array(#"a\\u0041 \x \u005c"#.utf8)), #"a\\u0041 \x \"#)
        XCTAssertEqual(try unicode(Array(#"end\"#.utf8)), #"end\"#)
        assertReadError(.malformedPickle, "truncated \\u") { try unicode(Array(#"\u12"#.utf8)) }
        assertReadError(.malformedPickle, "lone surrogate") { try unicode(Array(#"\ud800"#.utf8)) }
        assertReadError(.malformedPickle, "past U+10FFFF") { try unicode(Array(#"\U00110000"#.utf8)) }
    }

    // MARK: - Text numbers

    func testTextNumbers() throws {
        func one(_ op: UInt8, _ arg: String) throws -> PyValue {
            var p = PickleBuilder(); p.op(op); p.bytes += Array(arg.utf8) + [0x0A]; p.stop()
            return try run(p)
        }
        guard case .bool(false) = try one(0x49, "00"), case .bool(true) = try one(0x49, "01") else { return XCTFail("INT booleans") }
        guard case .int(0) = try one(0x49, "0"), case .int(-7) = try one(0x49, "-7"), case .int(1001) = try one(0x49, "1001"),
              case .int(Int64.max) = try one(0x49, "9223372036854775807"), case .int(Int64.min) = try one(0x49, "-9223372036854775808") else {
            return XCTFail("INT")
        }
        guard case .bigInt(let b) = try one(0x49, "9223372036854775808") else { return XCTFail("INT past Int64") }
        XCTAssertEqual(b, [0, 0, 0, 0, 0, 0, 0, 0x80, 0])
        guard case .int(42) = try one(0x4C, "42L"), case .int(-3) = try one(0x4C, "-3") else { return XCTFail("LONG") }
        // The legacy magic number written as text is the same value TorchReader compares.
        guard case .bigInt(let magic) = try one(0x4C, "119547037146038801333356L") else { return XCTFail("LONG magic") }
        XCTAssertEqual(magic, TorchReader.legacyMagic)
        guard case .bigInt(let neg) = try one(0x4C, "-18446744073709551616L") else { return XCTFail("LONG -2^64") }
        XCTAssertEqual(neg, [0, 0, 0, 0, 0, 0, 0, 0, 0xFF])
        for bad in ["", "+", "1.5", "0x10", "010", " 1", "1_000", "1e3", "--1", "١٢"] {
            assertReadError(.malformedPickle, "INT '\(bad)'") { try one(0x49, bad) }
        }
        assertReadError(.limitExceeded, "4301 digits") { try one(0x4C, String(repeating: "9", count: 4301) + "L") }
        guard case .bigInt = try one(0x4C, String(repeating: "9", count: 4300) + "L") else { return XCTFail("4300 digits") }

        func float(_ s: String) throws -> Double {
            guard case .float(let v) = try one(0x46, s) else { throw ReadError(.malformedPickle, file: "", "not a float") }
            return v
        }
        XCTAssertEqual(try float("0.1"), 0.1)
        XCTAssertEqual(try float("1e-05"), 1e-05)
        XCTAssertEqual(try float("-1.5E+300"), -1.5e300)
        XCTAssertEqual(try float("3."), 3)
        XCTAssertEqual(try float(".5"), 0.5)
        XCTAssertEqual(try float("inf"), .infinity)
        XCTAssertEqual(try float("-Infinity"), -.infinity)
        XCTAssertTrue(try float("nan").isNaN)
        for bad in ["", "0x1p3", "1e", "e5", ".", "1.2.3", "nan0", " 1", "1,5"] {
            assertReadError(.malformedPickle, "FLOAT '\(bad)'") { try one(0x46, bad) }
        }

        var l4 = PickleBuilder()   // LONG4, and LONG1 in a non-minimal form
        l4.emptyList(); l4.mark()
        l4.op(0x8B); l4.bytes += le32(3); l4.bytes += [0x01, 0x00, 0x00]
        l4.op(0x8A, 9); l4.bytes += [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]
        l4.op(0x8A, 0)
        l4.op(0x65); l4.stop()
        guard case .list(let nums) = try run(l4), case .int(1) = nums.items[0], case .int(-1) = nums.items[1], case .int(0) = nums.items[2] else {
            return XCTFail("LONG4 / LONG1")
        }
        var negLen = PickleBuilder(); negLen.op(0x8B); negLen.bytes += le32(0x8000_0000); negLen.stop()
        assertReadError(.malformedPickle, "LONG4 negative length") { try run(negLen) }
    }

    // MARK: - Protocol 0 containers and the text memo

    func testProtocol0Containers() throws {
        // (dp0\nS'a'\np1\n(lp2\nI1\naI2\nasS'b'\np3\ng2\nsS't'\n(I1\nF2.5\ntp4\ns.
        var p = PickleBuilder()
        p.bytes = []
        p.bytes += Array("(dp0\nS'a'\np1\n(lp2\nI1\naI2\nasS'b'\np3\ng2\nsS't'\n(I1\nF2.5\ntp4\nsS'd'\n(S'k'\nI00\nds.".utf8)
        guard case .dict(let d) = try run(p) else { return XCTFail("not a dict") }
        guard case .list(let a)? = d.value(forKey: "a"), case .list(let b)? = d.value(forKey: "b") else { return XCTFail("lists") }
        XCTAssertTrue(a === b, "GET returns the same list")
        XCTAssertEqual(a.items.compactMap(\.keyText), ["1", "2"])
        guard case .tuple(let t)? = d.value(forKey: "t"), case .float(2.5) = t[1] else { return XCTFail("tuple") }
        guard case .dict(let inner)? = d.value(forKey: "d"), case .bool(false)? = inner.value(forKey: "k") else { return XCTFail("DICT") }

        var odd = PickleBuilder(); odd.mark(); odd.op(0x4E); odd.op(0x64); odd.stop()
        assertReadError(.malformedPickle, "DICT odd") { try run(odd) }
        var getBad = PickleBuilder(); getBad.op(0x67); getBad.bytes += Array("x1\n".utf8); getBad.stop()
        assertReadError(.malformedPickle, "GET x1") { try run(getBad) }
        var getMissing = PickleBuilder(); getMissing.op(0x67); getMissing.bytes += Array("99999999999\n".utf8); getMissing.stop()
        assertReadError(.malformedPickle, "GET undefined") { try run(getMissing) }
        var shared = PickleBuilder()   // text and binary PUT/GET share one memo, as in Python
        shared.emptyList(); shared.op(0x70); shared.bytes += Array("5\n".utf8); shared.op(0x68, 5); shared.op(0x61); shared.stop()
        assertReadError(.malformedPickle, "list appended to itself through the shared memo") { try run(shared) }
    }

    // MARK: - Placeholders

    func testPlaceholderObjectsAreDataWithTheirArgumentsAndState() throws {
        var p = PickleBuilder()
        p.emptyDict(); p.mark()
        p.str("ns"); p.global("argparse", "Namespace"); p.emptyTuple(); p.op(0x81)     // NEWOBJ
        p.emptyDict(); p.str("lr"); p.op(0x47); p.bytes += Array(withUnsafeBytes(of: (0.5).bitPattern.bigEndian) { Array($0) }); p.op(0x73); p.op(0x62)
        p.str("path"); p.global("pathlib", "PosixPath"); p.str("/data"); p.str("x"); p.op(0x86); p.reduce()   // REDUCE
        p.str("attr"); p.global("pl.utilities", "AttributeDict"); p.emptyTuple(); p.op(0x81)
        p.mark(); p.str("k"); p.int(1); p.op(0x75)                                           // SETITEMS on it
        p.str("lst"); p.global("omegaconf.listconfig", "ListConfig"); p.emptyTuple(); p.op(0x81)
        p.mark(); p.int(1); p.int(2); p.op(0x65); p.int(3); p.op(0x61)                       // APPENDS, APPEND on it
        p.str("ex"); p.global("m", "Frozen"); p.emptyTuple(); p.emptyDict(); p.str("seed"); p.int(7); p.op(0x73); p.op(0x92)   // NEWOBJ_EX
        p.str("cls"); p.global("torch.optim.adamw", "AdamW")                                 // a class reference
        p.op(0x75); p.stop()
        let (v, m) = try machine(p)
        guard case .dict(let d) = v else { return XCTFail() }
        XCTAssertEqual(m.placeholderNames, ["argparse.Namespace", "pathlib.PosixPath", "pl.utilities.AttributeDict",
                                            "omegaconf.listconfig.ListConfig", "m.Frozen", "torch.optim.adamw.AdamW"])
        guard case .object(let ns)? = d.value(forKey: "ns"), let o = ns.object else { return XCTFail("ns") }
        XCTAssertEqual(o.qualifiedName, "argparse.Namespace")
        XCTAssertEqual(o.construction, .newobj)
        guard case .dict(let st)? = o.state, case .float(0.5)? = st.value(forKey: "lr") else { return XCTFail("Namespace state") }
        guard case .object(let path)? = d.value(forKey: "path"), let po = path.object else { return XCTFail("path") }
        XCTAssertEqual(po.construction, .reduce)
        XCTAssertEqual(po.args.compactMap(\.keyText), ["/data", "x"])
        guard case .object(let attr)? = d.value(forKey: "attr"), let ao = attr.object else { return XCTFail("attr") }
        XCTAssertEqual(ao.dictItems.count, 1)
        guard case .object(let lst)? = d.value(forKey: "lst") else { return XCTFail("lst") }
        XCTAssertEqual(lst.object?.listItems.compactMap(\.keyText), ["1", "2", "3"])
        guard case .object(let ex)? = d.value(forKey: "ex"), case .dict(let kw)? = ex.object?.kwargs, case .int(7)? = kw.value(forKey: "seed") else {
            return XCTFail("NEWOBJ_EX kwargs")
        }
        XCTAssertEqual(ex.object?.construction, .newobjEx)
        guard case .placeholder("torch.optim.adamw", "AdamW")? = d.value(forKey: "cls") else { return XCTFail("class reference") }
    }

    func testInstAndObj() throws {
        var p = PickleBuilder()
        p.emptyList(); p.mark()
        p.mark(); p.str("a"); p.op(0x69); p.bytes += Array("oldcfg\nOptions\n".utf8)      // INST
        p.mark(); p.global("oldcfg", "Options"); p.str("b"); p.op(0x6F)                  // OBJ
        p.op(0x65); p.stop()
        guard case .list(let l) = try run(p), case .object(let a) = l.items[0], case .object(let b) = l.items[1] else { return XCTFail() }
        XCTAssertEqual(a.object?.construction, .inst)
        XCTAssertEqual(b.object?.construction, .obj)
        XCTAssertEqual(b.object?.args.compactMap(\.keyText), ["b"])
        var empty = PickleBuilder(); empty.mark(); empty.op(0x6F); empty.stop()
        assertReadError(.malformedPickle, "OBJ without a class") { try run(empty) }
        var allowlisted = PickleBuilder(); allowlisted.mark(); allowlisted.op(0x69); allowlisted.bytes += Array("collections\nOrderedDict\n".utf8); allowlisted.stop()
        assertReadError(.malformedPickle, "INST of an allowlisted global") { try run(allowlisted) }
        var evil = PickleBuilder(); evil.mark(); evil.str("id"); evil.op(0x69); evil.bytes += Array("os\nsystem\n".utf8); evil.stop()
        assertReadError(.disallowedGlobal, "INST os.system") { try run(evil) }
    }

    /// omegaconf's shape: a child's `_parent` is the config, placed before the config's BUILD.
    /// The result keeps everything, the link is a back-reference, and nothing leaks.
    func testRecursivePlaceholdersBecomeBackReferencesAndAreFreed() throws {
        weak var weakConfig: PyObject?
        weak var weakChild: PyObject?
        weak var weakSelf: PyObject?
        func check() throws {
            var p = PickleBuilder()
            p.emptyDict(); p.str("cfg")
            p.global("omegaconf.dictconfig", "DictConfig"); p.emptyTuple(); p.op(0x81); p.op(0x71, 0)
            p.emptyDict(); p.str("_content")
            p.global("omegaconf.nodes", "AnyNode"); p.emptyTuple(); p.op(0x81)
            p.emptyDict(); p.str("_parent"); p.op(0x68, 0); p.op(0x73); p.op(0x62)     // child.state = {_parent: cfg}
            p.op(0x73); p.op(0x62)                                                     // cfg.state = {_content: child}
            p.op(0x73)                                                                 // top["cfg"] = cfg
            p.str("self"); p.global("m", "SelfRef"); p.emptyTuple(); p.op(0x81); p.op(0x71, 1)
            p.op(0x68, 1); p.op(0x62)                                                  // o.state = o
            p.mark(); p.str("me"); p.op(0x68, 1); p.op(0x75)                            // o["me"] = o
            p.op(0x73)                                                                 // top["self"] = o
            p.stop()
            guard case .dict(let d) = try run(p) else { return XCTFail() }
            guard case .object(let cfgRef)? = d.value(forKey: "cfg"), let cfg = cfgRef.object else { return XCTFail("cfg owned") }
            XCTAssertFalse(cfgRef.isBackReference)
            guard case .dict(let state)? = cfg.state, case .object(let childRef)? = state.value(forKey: "_content"),
                  let child = childRef.object, case .dict(let cs)? = child.state, case .object(let parent)? = cs.value(forKey: "_parent") else {
                return XCTFail("structure")
            }
            XCTAssertTrue(parent.isBackReference, "the child's _parent points back")
            XCTAssertNil(parent.object)
            XCTAssertTrue(parent.backReferenceTarget === cfg)
            XCTAssertEqual(parent.qualifiedName, "omegaconf.dictconfig.DictConfig")
            guard case .object(let selfRef)? = d.value(forKey: "self"), let so = selfRef.object,
                  case .object(let inner)? = so.state, case .object(let me)? = so.dictItems.first?.value else { return XCTFail("self") }
            XCTAssertTrue(inner.isBackReference && me.isBackReference)
            XCTAssertTrue(inner.backReferenceTarget === so)
            weakConfig = cfg
            weakChild = child
            weakSelf = so
        }
        try check()
        XCTAssertNil(weakConfig, "no reference cycle keeps the config alive")
        XCTAssertNil(weakChild)
        XCTAssertNil(weakSelf)
    }

    func testPlaceholdersWhereTensorsOrStoragesMustBe() {
        func rebuild(_ storage: (inout PickleBuilder) -> Void) -> PickleBuilder {
            var p = PickleBuilder()
            p.orderedDict(); p.str("w"); p.global("torch._utils", "_rebuild_tensor_v2"); p.mark()
            storage(&p)
            p.int(0); p.mark(); p.int(2); p.tuple(); p.mark(); p.int(1); p.tuple(); p.op(0x89); p.orderedDict(); p.tuple(); p.reduce()
            p.op(0x73); p.stop()
            return p
        }
        assertReadError(.disallowedGlobal, "object as storage") {
            try run(rebuild { $0.global("mymod", "FakeStorage"); $0.emptyTuple(); $0.reduce() })
        }
        assertReadError(.disallowedGlobal, "class as storage") { try run(rebuild { $0.global("mymod", "FakeStorage") }) }
        assertReadError(.disallowedGlobal, "placeholder storage type") {
            try run(rebuild { $0.mark(); $0.str("storage"); $0.global("mymod", "EvilStorage"); $0.str("0"); $0.str("cpu"); $0.int(2); $0.tuple(); $0.op(0x51) })
        }
        assertReadError(.disallowedGlobal, "placeholder in a size") {
            var p = PickleBuilder()
            p.orderedDict(); p.str("w"); p.global("torch._utils", "_rebuild_tensor_v2"); p.mark()
            p.storage("FloatStorage", key: "0", numel: 2)
            p.int(0); p.mark(); p.global("m", "N"); p.tuple(); p.mark(); p.int(1); p.tuple(); p.op(0x89); p.orderedDict(); p.tuple(); p.reduce()
            p.op(0x73); p.stop()
            return try run(p)
        }
        assertReadError(.disallowedGlobal, "parameter of a placeholder") {
            var p = PickleBuilder()
            p.global("torch._utils", "_rebuild_parameter"); p.global("m", "T"); p.emptyTuple(); p.reduce(); p.op(0x89); p.orderedDict(); p.op(0x87); p.reduce(); p.stop()
            return try run(p)
        }
        assertReadError(.unknownDType, "placeholder dtype") {
            var p = PickleBuilder()
            p.global("torch._utils", "_rebuild_tensor_v3"); p.mark()
            p.storage("UntypedStorage", key: "0", numel: 8)
            p.int(0); p.mark(); p.int(2); p.tuple(); p.mark(); p.int(1); p.tuple(); p.op(0x89); p.orderedDict(); p.global("numpy", "float32"); p.tuple(); p.reduce(); p.stop()
            return try run(p)
        }
        // The top level: a placeholder is not a dict of tensors; one from __main__ is a whole model.
        var top = PickleBuilder(); top.global("mypkg", "Net"); top.emptyTuple(); top.op(0x81); top.stop()
        assertReadError(.noStateDict, "placeholder at the top") { try run(top) }
        var main = PickleBuilder(); main.global("__main__", "Net"); main.emptyTuple(); main.op(0x81); main.emptyDict(); main.op(0x62); main.stop()
        assertReadError(.wholeModule, "__main__ object at the top") { try run(main) }
        var legacyModule = PickleBuilder()   // ('module', cls, source file, source): legacy whole-model pickles
        legacyModule.mark(); legacyModule.str("module"); legacyModule.global("mypkg", "Net"); legacyModule.str("net.py"); legacyModule.str("class Net: ..."); legacyModule.tuple(); legacyModule.op(0x51); legacyModule.stop()
        assertReadError(.wholeModule, "module persistent id") { try run(legacyModule) }
    }

    func testPlaceholderMisuse() {
        var a = PickleBuilder(); a.global("m", "C"); a.emptyDict(); a.op(0x62); a.stop()
        assertReadError(.malformedPickle, "BUILD on a class reference") { try run(a) }
        var b = PickleBuilder(); b.global("m", "C"); b.emptyTuple(); b.op(0x81); b.emptyDict(); b.op(0x62); b.emptyDict(); b.op(0x62); b.stop()
        assertReadError(.malformedPickle, "second BUILD") { try run(b) }
        var c = PickleBuilder(); c.global("m", "C"); c.emptyTuple(); c.op(0x81); c.emptyTuple(); c.reduce(); c.stop()
        assertReadError(.malformedPickle, "REDUCE on an object") { try run(c) }
        var d = PickleBuilder(); d.global("m", "C"); d.str("x"); d.op(0x81); d.stop()
        assertReadError(.malformedPickle, "NEWOBJ with non-tuple args") { try run(d) }
        var e = PickleBuilder(); e.global("collections", "OrderedDict"); e.emptyTuple(); e.op(0x81); e.stop()
        assertReadError(.malformedPickle, "NEWOBJ of an allowlisted global") { try run(e) }
        var f = PickleBuilder(); f.global("m", "C"); f.emptyTuple(); f.emptyTuple(); f.op(0x92); f.stop()
        assertReadError(.malformedPickle, "NEWOBJ_EX with non-dict kwargs") { try run(f) }
        var g = PickleBuilder(); g.global("m", "C"); g.int(1); g.op(0x61); g.stop()
        assertReadError(.malformedPickle, "APPEND on a class reference") { try run(g) }
    }

    /// Placeholders are inert whatever their name; these are refused so a hostile file says so.
    func testCodeExecutionGlobalsAreStillRefused() {
        for (m, n) in [("__builtin__", "eval"), ("__builtin__", "getattr"), ("builtins", "exec"), ("builtins", "__import__"),
                       ("os", "system"), ("posix", "system"), ("nt", "system"), ("subprocess", "check_output"),
                       ("commands", "getoutput"), ("cPickle", "loads"), ("pickle", "loads"), ("marshal", "loads"),
                       ("functools", "partial"), ("operator", "attrgetter"), ("importlib", "import_module"),
                       ("types", "FunctionType"), ("types", "CodeType"), ("ctypes", "CDLL"), ("socket", "socket"),
                       ("torch", "load"), ("torch.storage", "_load_from_bytes"), ("torch._tensor", "_rebuild_from_type_v2"),
                       ("torch._utils", "_rebuild_qtensor"), ("torch.cuda", "FloatStorage"), ("numpy", "load")] {
            var p = PickleBuilder()
            p.global(m, n); p.str("x"); p.op(0x85); p.reduce(); p.stop()
            assertReadError(.disallowedGlobal, "\(m).\(n)") { try run(p) }
        }
        for (m, n) in [("__builtin__", "set"), ("builtins", "dict"), ("types", "SimpleNamespace"), ("collections", "defaultdict"),
                       ("numpy.core.multiarray", "_reconstruct"), ("copy_reg", "_reconstructor"), ("torch.torch_version", "TorchVersion")] {
            var p = PickleBuilder()
            p.emptyList(); p.global(m, n); p.emptyTuple(); p.reduce(); p.op(0x61); p.stop()
            XCTAssertNoThrow(try run(p), "\(m).\(n) is a placeholder")
        }
    }

    func testLimitsCoverPlaceholders() {
        var deep = PickleBuilder()   // objects nested through BUILD
        deep.global("m", "N"); deep.op(0x71, 0); deep.op(0x30)
        for _ in 0..<150 { deep.op(0x68, 0); deep.emptyTuple(); deep.op(0x81) }
        for _ in 0..<149 { deep.op(0x62) }
        deep.stop()
        assertReadError(.limitExceeded, "BUILD nesting") { try run(deep) }
        var args = PickleBuilder()   // objects nested through their arguments
        for _ in 0..<150 { args.global("m", "N") }
        args.op(0x4E)
        for _ in 0..<150 { args.op(0x85); args.reduce() }
        args.stop()
        assertReadError(.limitExceeded, "argument nesting") { try run(args) }
        var items = PickleBuilder()  // objects nested through SETITEMS
        items.global("m", "D"); items.op(0x71, 0); items.op(0x30)
        for _ in 0..<150 { items.op(0x68, 0); items.emptyTuple(); items.op(0x81); items.str("k") }
        items.op(0x4E)
        for _ in 0..<150 { items.op(0x73) }
        items.stop()
        assertReadError(.limitExceeded, "SETITEM nesting") { try run(items) }
        var doubling = PickleBuilder()   // shared references: 2^40 values walked as a tree
        doubling.op(0x4E)
        for _ in 0..<40 { doubling.op(0x71, 0); doubling.op(0x68, 0); doubling.op(0x86) }
        doubling.stop()
        assertReadError(.limitExceeded, "tuple doubling") { try run(doubling) }
        var objDoubling = PickleBuilder()   // the same through placeholder state
        objDoubling.op(0x4E)
        for _ in 0..<40 { objDoubling.op(0x71, 0); objDoubling.global("m", "P"); objDoubling.op(0x68, 0); objDoubling.op(0x68, 0); objDoubling.op(0x86); objDoubling.reduce() }
        objDoubling.stop()
        assertReadError(.limitExceeded, "object doubling") { try run(objDoubling) }
        var few = PickleMachine.Limits()
        few.maxObjects = 50
        var many = PickleBuilder()   // object places count against maxObjects
        many.global("m", "C"); many.emptyTuple(); many.op(0x81); many.op(0x71, 0); many.op(0x30); many.emptyList(); many.mark()
        for _ in 0..<60 { many.op(0x68, 0) }
        many.op(0x65); many.stop()
        assertReadError(.limitExceeded, "object places") { try run(many, few) }
    }

    /// Python 2's OrderedDict.__reduce__: OrderedDict([[k, v], ...]).
    func testPython2OrderedDict() throws {
        var p = PickleBuilder()
        p.global("collections", "OrderedDict"); p.emptyList(); p.mark()
        p.emptyList(); p.mark(); p.str("a"); p.int(1); p.op(0x65)
        p.mark(); p.str("b"); p.int(2); p.tuple()
        p.emptyList(); p.mark(); p.str("a"); p.int(3); p.op(0x65)
        p.op(0x65); p.op(0x85); p.reduce(); p.stop()
        guard case .dict(let d) = try run(p) else { return XCTFail() }
        XCTAssertTrue(d.isOrdered)
        XCTAssertEqual(d.entries.compactMap(\.key.keyText), ["a", "b"])
        guard case .int(3)? = d.value(forKey: "a") else { return XCTFail("a repeated key overwrites") }
        var bad = PickleBuilder()
        bad.global("collections", "OrderedDict"); bad.emptyList(); bad.int(1); bad.op(0x61); bad.op(0x85); bad.reduce(); bad.stop()
        assertReadError(.malformedPickle, "OrderedDict([1])") { try run(bad) }
    }

    // MARK: - Rendering for comparison with expected.json

    func values(_ b: TensorBytes, _ dtype: DType) throws -> [Double] {
        b.withBytes { r in
            let n = r.count / dtype.size
            return (0..<n).map { i -> Double in
                let o = i * dtype.size
                switch dtype {
                case .f32: return Double(Float(bitPattern: r.loadUnaligned(fromByteOffset: o, as: UInt32.self)))
                case .f64: return Double(bitPattern: r.loadUnaligned(fromByteOffset: o, as: UInt64.self))
                case .f16: return Double(Float(Float16(bitPattern: r.loadUnaligned(fromByteOffset: o, as: UInt16.self))))
                case .bf16: return Double(Float(bitPattern: UInt32(r.loadUnaligned(fromByteOffset: o, as: UInt16.self)) << 16))
                case .i64: return Double(r.loadUnaligned(fromByteOffset: o, as: Int64.self))
                case .i32: return Double(r.loadUnaligned(fromByteOffset: o, as: Int32.self))
                case .i16: return Double(r.loadUnaligned(fromByteOffset: o, as: Int16.self))
                case .i8: return Double(r.loadUnaligned(fromByteOffset: o, as: Int8.self))
                case .u8, .bool: return Double(r[o])
                }
            }
        }
    }

    /// A PyValue as generate_pickle_cases.py renders Python's decoded value.
    func render(_ v: PyValue) -> Any {
        switch v {
        case .none: return NSNull()
        case .bool(let b): return b
        case .int(let i): return i
        case .bigInt(let b): return ["bigint": decimal(b)]
        case .float(let d): return ["float": String(format: "%016llx", d.bitPattern)]
        case .string(let s): return s
        case .bytes(let b): return ["bytes": b.map { String(format: "%02x", $0) }.joined()]
        case .tuple(let t): return t.map(render)
        case .list(let l): return l.items.map(render)
        case .dict(let d):
            var out: [String: Any] = [:]
            for e in d.entries { out[e.key.keyText ?? "?"] = render(e.value) }
            return out
        case .global(let m, let n), .placeholder(let m, let n): return ["class": "\(m).\(n)"]
        case .object(let r):
            guard let o = r.object else { return ["backref": r.qualifiedName] }
            var kwargs: [String: Any] = [:]
            if case .dict(let kw)? = o.kwargs { for e in kw.entries { kwargs[e.key.keyText ?? "?"] = render(e.value) } }
            return ["object": o.qualifiedName, "args": o.args.map(render), "kwargs": kwargs,
                    "state": o.state.map(render) ?? NSNull(), "items": o.listItems.map(render),
                    "entries": o.dictItems.map { [render($0.key), render($0.value)] }]
        case .storage(let s): return ["storage": s.key]
        case .tensor(let t): return ["tensor": t.shape]
        }
    }

    /// Two's complement little-endian bytes as a decimal string.
    func decimal(_ b: [UInt8]) -> String {
        let negative = (b.last ?? 0) & 0x80 != 0
        var mag = b
        if negative {   // -(~x + 1)
            var carry = true
            for i in mag.indices { mag[i] = ~mag[i]; if carry { mag[i] &+= 1; carry = mag[i] == 0 } }
        }
        var digits: [Character] = []
        var limbs = mag.reversed().map { UInt32($0) }   // big-endian base 256
        while limbs.contains(where: { $0 != 0 }) {
            var rem: UInt32 = 0
            for i in limbs.indices { let cur = rem << 8 | limbs[i]; limbs[i] = cur / 10; rem = cur % 10 }
            digits.append(Character(String(rem)))
        }
        return (negative ? "-" : "") + (digits.isEmpty ? "0" : String(digits.reversed()))
    }

    func canonical(_ v: Any) throws -> String {
        String(decoding: try JSONSerialization.data(withJSONObject: ["v": v], options: [.sortedKeys, .fragmentsAllowed]), as: UTF8.self)
    }
}
