import CZip

/// The zip container of a `torch.save` file, read from a `ByteSource`.
///
/// Two readers agree before anything is trusted: libzip opens the bytes with consistency checks
/// (`ZIP_CHECKCONS`: local headers against the central directory) and inflates DEFLATED entries;
/// our own walk of the central directory finds each STORED payload's offset from its LOCAL header
/// (30 + name length + local extra length) so tensors are read straight from the mapped file.
/// Names, sizes and methods from both must match. See formats/pytorch.md.
final class ZipArchive {
    struct Entry {
        let name: String
        let method: UInt16          // 0 stored, 8 deflated
        let compressedSize: Int
        let size: Int
        let localHeaderOffset: Int
        let payloadOffset: Int
        let index: Int              // libzip index
    }

    let source: ByteSource
    private(set) var entries: [Entry] = []
    private var byName: [String: Int] = [:]
    private var handle: OpaquePointer?

    var file: String { source.name }

    init(_ source: ByteSource) throws {
        self.source = source
        try readCentralDirectory()
        try openWithLibzip()
    }

    deinit { if let z = handle { zip_discard(z) } }

    func entry(_ name: String) -> Entry? { byName[name].map { entries[$0] } }

    private func bad(_ code: ReadError.Code, _ place: String, _ detail: String) -> ReadError {
        ReadError(code, file: file, place: place, detail)
    }

    private func bad(_ place: String, _ detail: String) -> ReadError {
        ReadError(.badZip, file: file, place: place, detail)
    }

    // MARK: - Central directory

    private func readCentralDirectory() throws {
        let b = source.bytes
        guard b.count >= 22 else { throw bad(.truncated, "end of central directory", "file of \(b.count) bytes is too short for a zip") }
        // End of central directory: the last PK\5\6 whose comment ends exactly at end of file.
        var eocd = -1
        var i = b.count - 22
        let lowest = max(0, b.count - 22 - 0xFFFF)
        while i >= lowest {
            if b.le32(i) == 0x0605_4b50, Int(b.le16(i + 20)) == b.count - i - 22 { eocd = i; break }
            i -= 1
        }
        guard eocd >= 0 else { throw bad(.truncated, "end of central directory", "no end-of-central-directory record (truncated or not a zip)") }
        var count = Int(b.le16(eocd + 10))
        var cdSize = Int(b.le32(eocd + 12))
        var cdOffset = Int(b.le32(eocd + 16))
        guard b.le16(eocd + 4) == 0 || b.le16(eocd + 4) == 0xFFFF else { throw bad("end of central directory", "multi-disk zip archives are not supported") }
        // Zip64: locator right before the EOCD.
        if eocd >= 20, b.le32(eocd - 20) == 0x0706_4b50 {
            let z64 = b.le64(eocd - 20 + 8)
            guard b.count >= 56, z64 <= UInt64(b.count - 56) else { throw bad(.truncated, "zip64 end of central directory", "offset \(z64) past end of file") }
            let z = Int(z64)
            guard b.le32(z) == 0x0606_4b50 else { throw bad("zip64 end of central directory @ byte \(z)", "bad signature") }
            let c64 = b.le64(z + 32), s64 = b.le64(z + 40), o64 = b.le64(z + 48)
            guard c64 <= UInt64(b.count), s64 <= UInt64(b.count), o64 <= UInt64(b.count) else {
                throw bad(.truncated, "zip64 end of central directory", "sizes past end of file")
            }
            count = Int(c64); cdSize = Int(s64); cdOffset = Int(o64)
        }
        guard let cdEnd = Checked.add(cdOffset, cdSize), cdEnd <= b.count else {
            throw bad(.truncated, "central directory", "central directory \(cdOffset)+\(cdSize) runs past end of file (\(b.count) bytes)")
        }
        guard count <= cdSize / 46 else { throw bad("central directory", "\(count) entries cannot fit in \(cdSize) bytes") }

        var p = cdOffset
        var seen = Set<String>()
        for index in 0..<count {
            guard p + 46 <= cdEnd, b.le32(p) == 0x0201_4b50 else {
                throw bad("central directory entry \(index) @ byte \(p)", "bad signature or truncated")
            }
            let flags = b.le16(p + 8), method = b.le16(p + 10)
            var csize = UInt64(b.le32(p + 20)), usize = UInt64(b.le32(p + 24))
            let nameLen = Int(b.le16(p + 28)), extraLen = Int(b.le16(p + 30)), commentLen = Int(b.le16(p + 32))
            var local = UInt64(b.le32(p + 42))
            let recEnd = p + 46 + nameLen + extraLen + commentLen
            guard recEnd <= cdEnd else { throw bad("central directory entry \(index) @ byte \(p)", "name/extra/comment run past the central directory") }
            let nameBytes = UnsafeRawBufferPointer(rebasing: b[(p + 46)..<(p + 46 + nameLen)])
            guard let name = String(validating: nameBytes, as: UTF8.self) else {
                throw bad(.unsafeEntryName, "central directory entry \(index)", "entry name is not valid UTF-8")
            }
            // Zip64 extended information extra field (0x0001).
            var e = p + 46 + nameLen
            let eEnd = e + extraLen
            while e + 4 <= eEnd {
                let id = b.le16(e), len = Int(b.le16(e + 2))
                guard e + 4 + len <= eEnd else { throw bad("entry '\(name)'", "extra field runs past its record") }
                if id == 0x0001 {
                    var q = e + 4
                    func next() throws -> UInt64 {
                        guard q + 8 <= e + 4 + len else { throw bad("entry '\(name)'", "zip64 extra field too short") }
                        defer { q += 8 }
                        return b.le64(q)
                    }
                    if usize == 0xFFFF_FFFF { usize = try next() }
                    if csize == 0xFFFF_FFFF { csize = try next() }
                    if local == 0xFFFF_FFFF { local = try next() }
                }
                e += 4 + len
            }
            try checkName(name)
            guard seen.insert(name).inserted else { throw bad(.duplicateName, "entry '\(name)'", "the archive holds two entries named '\(name)'") }
            guard flags & 1 == 0 else { throw bad(.encryptedEntry, "entry '\(name)'", "entry is encrypted") }
            guard method == 0 || method == 8 else { throw bad("entry '\(name)'", "compression method \(method) is not supported (only stored and deflated)") }
            guard csize <= UInt64(b.count), usize <= UInt64(Int.max / 2), b.count >= 30, local <= UInt64(b.count - 30) else {
                throw bad(.truncated, "entry '\(name)'", "declared sizes or offset past end of file")
            }
            if method == 0 && csize != usize { throw bad(.headerMismatch, "entry '\(name)'", "stored entry with compressed size \(csize) != size \(usize)") }
            // Local header: its name must match; payload starts after its own name and extra.
            let l = Int(local)
            guard b.le32(l) == 0x0403_4b50 else { throw bad(.headerMismatch, "entry '\(name)' @ byte \(l)", "no local header at the offset the central directory gives") }
            let lflags = b.le16(l + 6), lmethod = b.le16(l + 8)
            let lNameLen = Int(b.le16(l + 26)), lExtraLen = Int(b.le16(l + 28))
            guard l + 30 + lNameLen <= b.count else { throw bad(.truncated, "entry '\(name)' local header", "runs past end of file") }
            let lname = UnsafeRawBufferPointer(rebasing: b[(l + 30)..<(l + 30 + lNameLen)])
            guard lname.elementsEqual(nameBytes) else { throw bad(.headerMismatch, "entry '\(name)' @ byte \(l)", "local header names a different entry") }
            guard lmethod == method, lflags & 1 == 0 else { throw bad(.headerMismatch, "entry '\(name)' @ byte \(l)", "local header method/flags differ from the central directory") }
            let payload = l + 30 + lNameLen + lExtraLen
            guard let pEnd = Checked.add(payload, Int(csize)), pEnd <= b.count else {
                throw bad(.truncated, "entry '\(name)'", "payload \(payload)+\(csize) runs past end of file (\(b.count) bytes)")
            }
            entries.append(Entry(name: name, method: method, compressedSize: Int(csize), size: Int(usize),
                                 localHeaderOffset: l, payloadOffset: payload, index: index))
            byName[name] = entries.count - 1
            p = recEnd
        }
        // No two entries (local header through payload) may overlap, nor reach into the directory.
        let spans = entries.map { ($0.localHeaderOffset, $0.payloadOffset + $0.compressedSize, $0.name) }.sorted { $0.0 < $1.0 }
        for (a, c) in zip(spans, spans.dropFirst()) where a.1 > c.0 {
            throw bad(.overlappingEntries, "entries '\(a.2)' and '\(c.2)'", "entries overlap (bytes \(c.0)..<\(a.1))")
        }
        if let last = spans.last, last.1 > cdOffset {
            throw bad(.overlappingEntries, "entry '\(last.2)'", "entry overlaps the central directory")
        }
    }

    private func checkName(_ name: String) throws {
        let parts = name.split(separator: "/", omittingEmptySubsequences: false)
        if name.isEmpty || name.hasPrefix("/") || name.contains("\0") || name.contains("\\")
            || parts.contains("..") || parts.contains(".") {
            throw bad(.unsafeEntryName, "entry '\(name)'", "unsafe entry name (absolute, '..', '.', backslash or NUL)")
        }
    }

    // MARK: - libzip

    private func openWithLibzip() throws {
        var zerr = zip_error_t()
        zip_error_init(&zerr)
        defer { zip_error_fini(&zerr) }
        guard let src = zip_source_buffer_create(source.bytes.baseAddress, zip_uint64_t(source.count), 0, &zerr) else {
            throw bad("archive", "libzip: \(String(cString: zip_error_strerror(&zerr)))")
        }
        guard let z = zip_open_from_source(src, ZIP_RDONLY | ZIP_CHECKCONS, &zerr) else {
            zip_source_free(src)
            throw bad("archive", "libzip refuses the archive: \(String(cString: zip_error_strerror(&zerr)))")
        }
        handle = z
        let n = Int(zip_get_num_entries(z, 0))
        guard n == entries.count else { throw bad(.headerMismatch, "archive", "libzip sees \(n) entries, the central directory \(entries.count)") }
        for e in entries {
            var st = zip_stat_t()
            zip_stat_init(&st)
            guard zip_stat_index(z, zip_uint64_t(e.index), ZIP_FL_ENC_RAW, &st) == 0, let cname = st.name else {
                throw bad("entry '\(e.name)'", "libzip cannot stat the entry")
            }
            guard String(cString: cname) == e.name, Int(st.size) == e.size, Int(st.comp_size) == e.compressedSize,
                  UInt16(st.comp_method) == e.method else {
                throw bad(.headerMismatch, "entry '\(e.name)'", "libzip and the central directory disagree on name, size or method")
            }
        }
    }

    // MARK: - Entry bytes

    /// The uncompressed bytes of an entry: a view into the file for STORED entries, an inflated
    /// buffer (capped at the declared size, CRC checked by libzip) for DEFLATED ones.
    func bytes(of e: Entry) throws -> TensorBytes {
        if e.method == 0 {
            return TensorBytes(viewOf: source, try source.slice(e.payloadOffset, e.size, place: "entry '\(e.name)'"))
        }
        guard let z = handle, let f = zip_fopen_index(z, zip_uint64_t(e.index), 0) else {
            throw bad("entry '\(e.name)'", "libzip cannot open the entry")
        }
        defer { zip_fclose(f) }
        let out = OwnedBuffer(count: e.size)
        var done = 0
        while done < e.size {
            let n = zip_fread(f, out.mutable.baseAddress! + done, zip_uint64_t(e.size - done))
            guard n > 0 else { throw bad(.truncated, "entry '\(e.name)'", "inflating stopped at \(done) of \(e.size) bytes") }
            done += Int(n)
        }
        var extra: UInt8 = 0
        let more = zip_fread(f, &extra, 1)
        guard more == 0 else { throw bad(.headerMismatch, "entry '\(e.name)'", "inflates to more than its declared \(e.size) bytes") }
        return TensorBytes(owning: out)
    }
}
