import XCTest
@testable import TensorIO
import TestSupport

/// hostile-inputs.md items 1-9: the pickle interpreter refuses, never executes, never crashes.
final class PickleHostileTests: XCTestCase {
    func run(_ p: PickleBuilder) throws -> PyValue {
        try p.bytes.withUnsafeBytes { buf in
            var m = PickleMachine(data: buf, file: "crafted.pkl", entry: "data.pkl")
            return try m.run()
        }
    }

    func testValidOrderedDictWithTensor() throws {
        var p = PickleBuilder()
        p.orderedDict(); p.str("w")
        p.tensor("FloatStorage", key: "0", numel: 6, offset: 0, size: [2, 3], stride: [3, 1])
        p.op(0x73); p.stop()
        guard case .dict(let d) = try run(p), case .tensor(let t)? = d.value(forKey: "w") else { return XCTFail("no tensor") }
        XCTAssertEqual(t.shape, [2, 3]); XCTAssertEqual(t.stride, [3, 1]); XCTAssertEqual(t.dtype, .f32)
    }

    func testDisallowedGlobalsAreRefusedWhenNamed() {
        for (m, n) in [("builtins", "eval"), ("builtins", "exec"), ("builtins", "getattr"), ("builtins", "__import__"),
                       ("os", "system"), ("posix", "system"), ("subprocess", "Popen"), ("functools", "partial"),
                       ("operator", "attrgetter"), ("importlib", "import_module"), ("torch", "load"),
                       ("torch.storage", "_load_from_bytes"), ("torch._tensor", "_rebuild_from_type_v2"), ("pickle", "loads")] {
            var p = PickleBuilder()
            p.global(m, n); p.str("echo pwned"); p.op(0x85); p.reduce(); p.stop()
            assertReadError(.disallowedGlobal, "\(m).\(n)") { try run(p) }
        }
        var s = PickleBuilder()   // STACK_GLOBAL path too
        s.str("os"); s.str("system"); s.op(0x93); s.stop()
        assertReadError(.disallowedGlobal, "STACK_GLOBAL os.system") { try run(s) }
    }

    func testWholeModulePickleIsNamed() {
        var p = PickleBuilder()
        p.global("torch.nn.modules.linear", "Linear"); p.stop()
        assertReadError(.wholeModule) { try run(p) }
        var q = PickleBuilder()
        q.global("__main__", "CLIP"); q.stop()
        assertReadError(.wholeModule) { try run(q) }
    }

    func testDisallowedOpcodes() {
        // Protocol 0-2 text and Python 2 opcodes, INST/OBJ/NEWOBJ(_EX) and LONG4 are accepted (PickleCompatTests).
        for op: UInt8 in [0x82 /* EXT1 */, 0x83, 0x84, 0x50 /* PERSID */, 0x32 /* DUP */,
                          0x8F /* EMPTY_SET */, 0x90 /* ADDITEMS */, 0x91 /* FROZENSET */, 0x97 /* NEXT_BUFFER */, 0x98 /* READONLY_BUFFER */] {
            var p = PickleBuilder()
            p.op(op); p.stop()
            assertReadError(.disallowedOpcode, "opcode \(op)") { try run(p) }
        }
    }

    func testContainerTypeChecks() {
        var a = PickleBuilder()   // SETITEM on a list
        a.emptyList(); a.str("k"); a.str("v"); a.op(0x73); a.stop()
        assertReadError(.malformedPickle, "SETITEM on list") { try run(a) }
        var b = PickleBuilder()   // APPEND on a dict
        b.emptyDict(); b.str("v"); b.op(0x61); b.stop()
        assertReadError(.malformedPickle, "APPEND on dict") { try run(b) }
        var c = PickleBuilder()   // BUILD on a list
        c.emptyList(); c.emptyDict(); c.op(0x62); c.stop()
        assertReadError(.malformedPickle, "BUILD on list") { try run(c) }
        var d = PickleBuilder()   // BUILD on a plain dict
        d.emptyDict(); d.emptyDict(); d.op(0x62); d.stop()
        assertReadError(.malformedPickle, "BUILD on dict") { try run(d) }
        var e = PickleBuilder()   // REDUCE on a string
        e.str("x"); e.emptyTuple(); e.reduce(); e.stop()
        assertReadError(.malformedPickle, "REDUCE on str") { try run(e) }
        var f = PickleBuilder()   // storage class called outside a persistent id
        f.global("torch", "FloatStorage"); f.emptyTuple(); f.reduce(); f.stop()
        assertReadError(.disallowedGlobal, "FloatStorage()") { try run(f) }
    }

    func testMemo() {
        var a = PickleBuilder()
        a.op(0x68, 7); a.stop()   // BINGET 7, never PUT
        assertReadError(.malformedPickle, "undefined memo") { try run(a) }
        var b = PickleBuilder()   // huge PUT index allocates nothing
        b.emptyList(); b.op(0x72, 0xFF, 0xFF, 0xFF, 0xFF); b.op(0x6A, 0xFF, 0xFF, 0xFF, 0xFF); b.op(0x30); b.stop()
        XCTAssertNoThrow(try run(b))
    }

    func testLengthsAndEncoding() {
        var a = PickleBuilder()
        a.op(0x58); a.bytes += le32(0xFFFF_FFF0); a.bytes += Array("abc".utf8)   // BINUNICODE longer than the data
        assertReadError(.truncated, "long string") { try run(a) }
        var b = PickleBuilder()
        b.op(0x8C, 2, 0xC3, 0x28); b.stop()   // invalid UTF-8
        assertReadError(.malformedPickle, "invalid utf-8") { try run(b) }
        var c = PickleBuilder()
        c.op(0x8E); c.bytes += le64(UInt64.max)   // BINBYTES8 with a huge length
        assertReadError(.truncated, "huge bytes") { try run(c) }
    }

    func testStackDiscipline() {
        var a = PickleBuilder(); a.op(0x73); a.stop()   // SETITEM on empty stack
        assertAnyReadError("underflow") { try run(a) }
        var b = PickleBuilder(); b.str("a"); b.tuple(); b.stop()   // TUPLE without MARK
        assertReadError(.malformedPickle, "unmatched MARK") { try run(b) }
        var c = PickleBuilder(); c.op(0x4E); c.stop(); c.op(0x4E)   // bytes after STOP
        assertReadError(.malformedPickle, "trailing bytes") { try run(c) }
        var d = PickleBuilder(); d.op(0x4E); d.op(0x4E); d.stop()   // STOP with leftovers
        assertReadError(.malformedPickle, "leftovers") { try run(d) }
        var e = PickleBuilder(); e.op(0x4E)   // no STOP
        assertReadError(.truncated, "no STOP") { try run(e) }
        var f = PickleBuilder(); f.mark(); f.str("a"); f.op(0x30); f.op(0x30); f.tuple(); f.stop()   // POP across a MARK
        assertAnyReadError("pop across mark") { try run(f) }
    }

    func testFrames() {
        var a = PickleBuilder()
        a.op(0x95); a.bytes += le64(1000); a.op(0x4E); a.stop()   // FRAME longer than the rest
        assertReadError(.truncated, "frame too long") { try run(a) }
        var b = PickleBuilder()   // an opcode straddling the frame end
        b.op(0x95); b.bytes += le64(2); b.op(0x4A, 1, 2, 3, 4); b.stop()
        assertReadError(.malformedPickle, "straddle") { try run(b) }
        var c = PickleBuilder()   // a correct frame
        c.op(0x95); c.bytes += le64(2); c.op(0x4E, 0x2E)
        XCTAssertNoThrow(try run(c))
    }

    func testNestingAndObjectCaps() {
        var a = PickleBuilder()
        for _ in 0..<500 { a.mark() }
        a.op(0x4E)
        for _ in 0..<500 { a.tuple() }
        a.stop()
        assertReadError(.limitExceeded, "nested tuples") { try run(a) }
        var b = PickleBuilder()   // lists nested by APPEND
        b.emptyList()
        for _ in 0..<300 { b.emptyList() }
        for _ in 0..<300 { b.op(0x61) }
        b.stop()
        assertReadError(.limitExceeded, "nested lists") { try run(b) }
        var c = PickleBuilder()   // a list appended to itself, over and over
        c.emptyList(); c.op(0x71, 0)
        for _ in 0..<200 { c.op(0x68, 0); c.op(0x61) }
        c.stop()
        assertReadError(.malformedPickle, "self-reference") { try run(c) }
    }

    /// Reference cycles (never freed) and containers filled after they were placed (which would
    /// let nesting grow past the cap unseen, and overflow the stack when the value is freed).
    func testCyclesAndRefilledContainersAreRefused() throws {
        var a = PickleBuilder()   // d[k] = d
        a.emptyDict(); a.op(0x71, 0); a.str("k"); a.op(0x68, 0); a.op(0x73); a.stop()
        assertReadError(.malformedPickle, "dict into itself") { try run(a) }
        XCTAssertThrowsError(try run(a)) { XCTAssertTrue("\($0)".contains("reference cycle"), "\($0)") }
        var b = PickleBuilder()   // a = [b]; then b.append(a): b was placed, so it is final
        b.emptyList(); b.op(0x71, 0); b.emptyList(); b.op(0x71, 1); b.op(0x61)   // a.append(b)
        b.op(0x68, 1); b.op(0x68, 0); b.op(0x61); b.stop()                        // b.append(a)
        assertReadError(.malformedPickle, "indirect cycle") { try run(b) }
        var c = PickleBuilder()   // a chain built by filling each list after it was placed: L0=[L1], L1=[L2], ...
        c.emptyList(); c.op(0x71, 0)
        for k in 1..<250 { c.op(0x68, UInt8(k - 1)); c.emptyList(); c.op(0x71, UInt8(k)); c.op(0x61); c.op(0x30) }
        c.op(0x68, 0); c.stop()
        assertReadError(.malformedPickle, "re-opened chain") { try run(c) }
        var t = PickleBuilder()   // a list inside a tuple is final too
        t.emptyList(); t.op(0x71, 0); t.op(0x85); t.op(0x68, 0); t.int(1); t.op(0x61); t.stop()
        assertReadError(.malformedPickle, "filled after a tuple took it") { try run(t) }
        var s = PickleBuilder()   // OrderedDict whose BUILD state is itself
        s.orderedDict(); s.op(0x71, 0); s.op(0x68, 0); s.op(0x62); s.stop()
        assertReadError(.malformedPickle, "BUILD with itself") { try run(s) }
        var ok = PickleBuilder()   // shared references without a cycle stay accepted: x = []; [x, x, (x,)]
        ok.emptyList(); ok.emptyList(); ok.op(0x71, 0); ok.op(0x61); ok.op(0x68, 0); ok.op(0x61); ok.op(0x68, 0); ok.op(0x85); ok.op(0x61); ok.stop()
        guard case .list(let l) = try run(ok) else { return XCTFail("not a list") }
        XCTAssertEqual(l.items.count, 3)
    }

    func testTensorViewChecks() {
        func tensorPickle(numel: Int32, offset: Int32, size: [Int32], stride: [Int32]) -> PickleBuilder {
            var p = PickleBuilder()
            p.orderedDict(); p.str("w"); p.tensor("FloatStorage", key: "0", numel: numel, offset: offset, size: size, stride: stride)
            p.op(0x73); p.stop()
            return p
        }
        assertReadError(.viewOutOfBounds, "past end") { try run(tensorPickle(numel: 6, offset: 1, size: [2, 3], stride: [3, 1])) }
        assertReadError(.viewOutOfBounds, "negative size") { try run(tensorPickle(numel: 6, offset: 0, size: [-2, 3], stride: [3, 1])) }
        assertReadError(.viewOutOfBounds, "negative stride") { try run(tensorPickle(numel: 6, offset: 5, size: [2, 3], stride: [-3, 1])) }
        assertReadError(.viewOutOfBounds, "negative offset") { try run(tensorPickle(numel: 6, offset: -1, size: [2], stride: [1])) }
        assertReadError(.malformedPickle, "rank mismatch") { try run(tensorPickle(numel: 6, offset: 0, size: [2, 3], stride: [1])) }
        assertReadError(.overflow, "overflowing product") {
            try run(tensorPickle(numel: 6, offset: 0, size: [Int32.max, Int32.max, Int32.max, Int32.max, 4], stride: [0, 0, 0, 0, 1]))
        }
        XCTAssertNoThrow(try run(tensorPickle(numel: 6, offset: 0, size: [4, 3], stride: [0, 1])))   // expand (stride 0)
        XCTAssertNoThrow(try run(tensorPickle(numel: 6, offset: 6, size: [0, 3], stride: [3, 1])))   // empty at the end
    }

    func testStorageKeyWithTwoDTypes() {
        var p = PickleBuilder()
        p.orderedDict()
        p.str("a"); p.tensor("FloatStorage", key: "0", numel: 4, offset: 0, size: [4], stride: [1]); p.op(0x73)
        p.str("b"); p.tensor("HalfStorage", key: "0", numel: 4, offset: 0, size: [4], stride: [1]); p.op(0x73)
        p.stop()
        assertReadError(.storageDTypeConflict) { try run(p) }
    }
}
