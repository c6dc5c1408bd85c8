#!/usr/bin/env python3
"""Golden token ids for the Swift BertTokenizer -> golden/tokens.json.

Loads the seed's tokenizer exactly as the seed does (AutoTokenizer on the seed's model folder;
transformers loads the FAST tokenizer from tokenizer.json) and encodes a fixed, varied set of
strings the way the seed batches them:

    tok(texts, padding='max_length', truncation=True, max_length=128, return_tensors='pt')

(the seed wrote `tok.batch_encode_plus(...)`; transformers 5 removed that alias, and calling the
tokenizer is the same operation). For every string it checks that attention_mask is 1 on the real
tokens and 0 on the padding, that token_type_ids are all 0 and that the padding is the [PAD] id,
and records the unpadded input_ids ([CLS] ... [SEP]). The Swift side therefore needs only the ids.

Output: {"tokenizer": ..., "max_length": 128, "categories": {name: count},
         "cases": [{"category": ..., "text": ..., "ids": [...]}]}

Deterministic: the strings come from fixed lists and a seeded random.Random, and nothing touches
the network. Usage (from the repository root):

    /work/venv/bin/python golden/generate_tokens.py [--out golden/tokens.json]
"""

import argparse
import json
import os
import random
import sys

SEED_MODEL = os.environ.get("LITECLIP_SEED", "/work/shared/liteclip-seed") + "/model"
MAX_LENGTH = 128
RNG_SEED = 8091

# ---------------------------------------------------------------------------------------------
# Strings


def captions(rng, n):
    """Flickr8k-like captions built from word lists."""
    people = ["a man", "a woman", "a boy", "a girl", "two children", "a little girl", "a young boy",
              "three men", "a group of people", "an older man", "a toddler", "two women", "a baby",
              "a child", "a crowd", "a skier", "a snowboarder", "a surfer", "a cyclist", "a climber",
              "a football player", "two girls", "a teenager", "the woman", "the man", "a couple"]
    animals = ["a dog", "a black dog", "a brown dog", "two dogs", "a white dog", "a puppy", "a cat",
               "a black and white dog", "a large brown dog", "three dogs", "a horse", "a tan dog",
               "a golden retriever", "a poodle", "a dalmatian", "a small white dog", "a sheepdog"]
    verbs = ["is running", "runs", "is jumping", "jumps", "is playing", "plays", "is sitting",
             "sits", "is standing", "stands", "is walking", "walks", "is swimming", "swims",
             "is climbing", "climbs", "is riding a bike", "rides a skateboard", "is catching a frisbee",
             "catches a ball", "is carrying a stick", "leaps", "is lying", "is smiling", "poses",
             "is digging", "splashes", "is skiing", "is surfing", "is looking at the camera"]
    places = ["through the grass", "on the beach", "in the snow", "in the water", "across a field",
              "on a sidewalk", "in front of a building", "near a fountain", "down a hill",
              "over a log", "in a park", "on a rock", "by the lake", "along the shore", "in the street",
              "on a dirt path", "through a tunnel", "under a tree", "at the playground",
              "on a trampoline", "in a pool", "on the steps", "into the ocean", "behind a fence"]
    extras = ["", "", "", " with a ball in its mouth", " wearing a red shirt", " in a blue jacket",
              " while another watches", " and smiles", " with a toy", " holding an umbrella",
              " wearing sunglasses", " with his arms outstretched", " in the background",
              " with a red collar", " near two other people", " wearing a pink helmet"]
    colors = ["red", "blue", "green", "yellow", "orange", "purple", "pink", "black", "white", "gray"]
    things = ["shirt", "hat", "dress", "jacket", "ball", "kayak", "tent", "car", "bicycle", "kite"]
    out = []
    for i in range(n):
        subject = rng.choice(people + animals)
        if rng.random() < 0.15:
            s = f"{subject} in a {rng.choice(colors)} {rng.choice(things)} {rng.choice(verbs)} {rng.choice(places)}"
        else:
            s = f"{subject} {rng.choice(verbs)} {rng.choice(places)}{rng.choice(extras)}"
        style = rng.random()
        if style < 0.35:
            s = s[0].upper() + s[1:] + " ."          # Flickr8k's spaced full stop
        elif style < 0.65:
            s = s[0].upper() + s[1:] + "."
        elif style < 0.75:
            s = s.upper()
        elif style < 0.85:
            s = " ".join(w.capitalize() for w in s.split())
        elif style < 0.92:
            s = s.replace(" ", "  ", 1) + " !"
        out.append(s)
    return out


PUNCT = [
    "hello, world!", "Hello,world.", "what?!?", "wait... what", "a-b-c", "state-of-the-art",
    "it's", "don't stop", "rock 'n' roll", "\"quoted\"", "(parenthesised)", "[bracketed]",
    "{braced}", "<angle>", "semi;colon:colon", "under_score", "back\\slash", "slash/slash",
    "pipe|pipe", "tilde~tilde", "caret^caret", "grave`grave", "at@at", "hash#hash", "dollar$100",
    "percent%", "amp&amp", "star*star", "plus+plus", "equals=equals", "!!!", "???", "...",
    "---", "—em dash—", "–en dash–", "“curly quotes”", "‘single curly’", "«guillemets»",
    "‹single›", "¿qué?", "¡hola!", "§ 12 ¶ 3", "•bullet•", "…ellipsis…", "‰ per mille",
    "†dagger‡", "※ reference mark", "、。「」『』", "【lenticular】", "〈angle〉", "・middle dot",
    "؟ arabic question", "، arabic comma", "।devanagari danda॥", "፧ ethiopic", "๏ thai",
    "a.b.c.d", "e.g. i.e. etc.", "U.S.A.", "Mr. & Mrs. Smith", "x+y=z", "1+1=2", "$%^&*()",
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~", "¢£¥€₹₽", "©®™", "°C and °F", "±×÷", "½ ¼ ¾",
    "©2024", "™brand", "a—b", "a‐b‑c", "⁂ asterism", "‼ ⁇ ⁈ ⁉", "⸮ reversed question",
    "〜wave dash", "～fullwidth tilde", "！fullwidth！", "，fullwidth comma", "＂fullwidth quote＂",
    "dog's ball's", "the dogs' toys", "'tis", "o'clock", "c'est la vie", "l'été",
]

NUMBERS = [
    "1", "42", "2024", "3.14159", "1,000,000", "1.000.000,50", "10:30 am", "12/25/2023",
    "2023-12-25", "+1 (555) 123-4567", "50%", "$19.99", "€5,00", "£3.50", "#1", "No. 7",
    "3rd place", "21st century", "1st 2nd 3rd 4th", "0.001", "1e10", "6.02e23", "-273.15",
    "0x1F600", "192.168.0.1", "v1.2.3", "7pm", "100km/h", "5'11\"", "4x4", "24/7", "9-5",
    "two 2 II ii", "١٢٣ arabic-indic digits", "१२३ devanagari digits", "１２３ fullwidth digits",
    "①②③ circled", "Ⅻ roman numeral", "²³ superscripts", "₁₂ subscripts", "123abc456",
    "abc123def", "000123", "3,5 m", "1 000 000", "1\u00a0000", "1'000'000", "π≈3.14", "√2",
    "8k flickr8k", "iPhone 15 Pro Max", "COVID-19", "B-52", "A4 paper", "mp3 mp4", "h2o H2O",
]

ACCENTS = [
    "café", "naïve", "Ångström", "Zürich", "résumé", "façade", "jalapeño", "São Paulo",
    "Kraków", "Dvořák", "Łódź", "Malmö", "Reykjavík", "Ærø", "Øresund", "straße", "STRASSE",
    "Straße", "crème brûlée", "piñata", "El Niño", "Ñandú", "über", "Über", "coöperate",
    "déjà vu", "Škoda", "Český Krumlov", "İstanbul", "istanbul", "ıi İI", "Ğ ğ Ş ş",
    "Ελληνικά", "ΣΊΣΥΦΟΣ", "ΟΔΟΣ", "Σ σ ς", "ǅ ǆ Ǆ", "ﬁ ﬂ ligatures", "Ǳ", "ẞ capital sharp s",
    "Ω Ω", "K Kelvin", "Å angstrom sign", "ſ long s", "ǰ", "ΐ", "ﬀ", "Ａｂｃ fullwidth",
    "cafe\u0301 combining acute", "e\u0301\u0300\u0302 stacked", "n\u0303", "A\u030a", "a\u0328",
    "Việt Nam", "Tiếng Việt", "Hà Nội", "phở", "Mỹ Tho", "ǎǐǒǔ", "ǖǘǚǜ", "āēīōū",
]

MIXED_CASE = [
    "HeLLo WoRLD", "iPhone", "McDonald", "O'Neil", "camelCaseWord", "PascalCaseWord",
    "snake_case_word", "SCREAMING_SNAKE", "kebab-case-word", "ALLCAPS", "lower", "Title Case",
    "tHiS iS wEiRd", "DOG", "Dog", "dOG", "A PHOTO OF A CAT", "a Photo Of A Cat",
    "NASA", "UNESCO", "eBay", "YouTube", "LaTeX", "GitHub", "macOS", "XMLHttpRequest",
]

SCRIPTS = [
    "Καλημέρα κόσμε", "ένας σκύλος τρέχει", "ΑΒΓΔΕΖΗΘ", "αβγδεζηθ", "Ἀθῆναι", "ὦ",
    "Привет мир", "собака бежит по траве", "ЁЛКА ёлка", "Україна", "Ђорђе", "Қазақстан",
    "مرحبا بالعالم", "كلب يجري", "العربية", "ﻻ ligature", "ﷺ", "سَلَامٌ with harakat",
    "שלום עולם", "כלב רץ", "עִבְרִית with niqqud", "ﬡ wide alef",
    "नमस्ते दुनिया", "कुत्ता घास में दौड़ रहा है", "हिन्दी", "क़", "ॐ",
    "สวัสดีชาวโลก", "สุนัขวิ่ง", "ภาษาไทย", "ก่", "ำ",
    "বাংলা", "தமிழ்", "తెలుగు", "ಕನ್ನಡ", "മലയാളം", "ગુજરાતી", "ਪੰਜਾਬੀ", "ଓଡ଼ିଆ", "සිංහල",
    "ქართული", "Հայերեն", "አማርኛ", "ᏣᎳᎩ", "ᐃᓄᒃᑎᑐᑦ", "ᚠᚢᚦ", "ܣܘܪܝܝܐ", "ދިވެހި", "ꦗꦮ",
    "ລາວ", "ខ្មែរ", "မြန်မာ", "བོད་ཡིག", "ᠮᠣᠩᠭᠣᠯ", "ⴰⵎⴰⵣⵉⵖ", "𐌰𐌱𐌲 gothic", "𓀀 hieroglyph",
]

CJK = [
    "你好世界", "一只狗在草地上跑", "中文字符", "漢字", "繁體中文", "我爱你", "北京", "上海市",
    "日本語のテキスト", "こんにちは", "カタカナ", "ひらがな", "犬が走っている", "東京タワー",
    "ﾊﾝｶｸｶﾀｶﾅ halfwidth", "がぎぐげご", "パピプペポ", "ヴ", "ゟ",
    "안녕하세요", "한국어", "개가 풀밭에서 뛰고 있다", "서울", "ᄒᆞᆫ글 jamo", "ㄱㄴㄷ compat jamo",
    "dog狗chien", "a猫b", "中a文b", "2024年12月25日", "第1名", "（全角括号）", "“中文引号”",
    "豈 compat ideograph", "\U00020000 ext B", "\U0002a700 ext C", "\U0002b740 ext D",
    "\U0002b820 ext E (python slow range)", "\U0002b920 ext E (fast range)", "\U0002ceb0 ext F",
    "\U0002f800 compat supplement", "\U00030000 ext G", "㐀 ext A", "⺀ radical", "⼀ kangxi",
    "〇 ideographic zero", "〡〢 hangzhou", "々 iteration", "ヶ月", "ｱｲｳ", "㍻ square era",
    "中国人民银行成立于一九四八年十二月一日",
]

EMOJI = [
    "😀", "I love dogs 🐶", "🐕‍🦺 service dog", "👨‍👩‍👧‍👦 family", "👍🏽 thumbs",
    "🇫🇷🇯🇵🇺🇸 flags", "🏳️‍🌈", "🏴󠁧󠁢󠁳󠁣󠁴󠁿 scotland", "❤️", "❤", "☺️", "✌🏿",
    "🥰 newer", "🫠 melting (14.0)", "🫨 shaking (15.0)", "🐦‍🔥 phoenix (15.1)", "🙂‍↔️",
    "1️⃣ keycap", "#️⃣", "©️", "👩🏻‍💻", "🧑‍🤝‍🧑", "😂😂😂", "dog🐕cat🐈", "🔥hot🔥",
    "☕ coffee", "⚽ soccer", "🎉🎊", "💯", "🚀 to the moon", "🌍🌎🌏", "⭐️⭐",
    "♥♦♣♠", "☀☁☂", "✓✔✗✘", "→←↑↓", "∞", "★☆", "♪♫", "🀄", "🃏",
]

COMBINING = [
    "a\u0301", "a\u0301\u0301\u0301", "\u0301 leading mark", "\u0301", "x\u20dd enclosing",
    "e\u0308\u0304", "a\u0316\u0301", "a\u0301\u0316", "o\u031b\u0323", "\u1e9b\u0323",
    "q\u0307\u0323", "Z\u0335\u0341 zalgo", "z̸̢̛̪̥̀ͅa̵̘̓l̷̙̈́g̶̜̈o̴͍͒",
    "i\u0307", "I\u0307", "\u0130\u0301", "\u03a3\u0342", "\u1f08\u0345",
    "क्ष", "\u093f alone", "ा alone", "\u0e31 thai mark", "\u05b0 hebrew point",
    "a\U0001d165\U0001d16e", "a\U0001d16e\U0001d165", "a\U0001d165\u0301\U0001d16d",
    "a\u08d4\U00011442", "a\U00011442\u08d4", "a\u0301\u08d4", "a\U00011a47\u0301",
    "a\u1885 mongolian", "a\ua9bd javanese", "a\u1734 hanunoo", "a\U0001171e ahom",
    "a\U000111c9b sharada", "a\u166db canadian", "x\U00011938 dives akuru",
    "a\u0890b arabic pound mark above", "a\U00013430b egyptian joiner", "a\u2e5db (new punct)",
    "a\u1ac0 (new mark)", "a\u1dfa (new mark)", "\u0344 \u0340 \u0341 \u0343 \u0f73 \u0f75 \u0f81",
    "\u0958 \u0959 \u09dc \u0a33 \u0b5c \u0f43 \ufb1d \ufb2a", "\u2126 \u212a \u212b \u1fee",
    "\uac00 \ud7a3 \ud4db", "\u1100\u1161\u11a8", "\u00c5\u0327\u0301",
]

CONTROL = [
    "a\x00b", "\x00", "a\x07b", "bell\x07", "tab\tseparated\tvalues", "line\nbreak", "crlf\r\nline",
    "cr\ronly", "vt\x0bff\x0c", "a\x0bb", "a\x0cb", "a\x1cb\x1dc\x1ed\x1ff", "a\x7fb", "a\x85b",
    "a\x9bb", "zero\u200bwidth", "soft\u00adhyphen", "\ufeffBOM start", "mid\ufeffBOM",
    "replace\ufffdment", "\ufffd", "zw\u200cnj\u200dj", "rtl\u200fmark\u200e", "\u202aembed\u202c",
    "\u2066isolate\u2069", "word\u2060joiner", "\u2061\u2062\u2063\u2064 invisible ops",
    "arabic\u0600number", "\u061c alm", "\u180e mongolian vowel sep", "\U000e0001 lang tag",
    "\U000e0041 tag A", "\ue000 private use", "\uf8ff apple", "\U000f0000 plane 15 pua",
    "\U0010fffd plane 16 pua", "\ufff9\ufffa\ufffb annotation", "\U0001d173 musical begin beam",
    "\U000110bd kaithi", "a\x01\x02\x03\x04\x05\x06\x08b", "\x1b[31mred\x1b[0m ansi",
    "\u0378 unassigned", "\U0001fffe nonchar", "\uffff nonchar", "\U0010ffff last", "a\ufffeb",
    "\U000e0100 variation selector 17", "a\ufe0fb", "\u034f cgj", "\u00ad", "\u200b",
]

WHITESPACE = [
    "", " ", "  ", "\t", "\n", "\r\n", " \t\n\r ", "\u00a0", "\u3000", "\u2003",
    "a\u00a0b", "a\u3000b", "a\u2003b", "a\u2000b\u2001c\u2002d\u2004e\u2005f\u2006g\u2007h\u2008i\u2009j\u200ak",
    "a\u2028b\u2029c", "a\u202fb\u205fc", "a\u1680b", "  leading", "trailing  ", "  both  ",
    "many     spaces     between", "\n\n\nnewlines\n\n", "\u00a0\u00a0", "\u3000dog\u3000",
    "a\x1cb", "\u180e", "a\u200bb", "\x0b", "\x85",
]

SPECIALS = [
    "[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]", "[cls]", "[mask]", "[Mask]", "[ MASK ]",
    "[MASK][MASK]", "a[MASK]b", "a [MASK] b", "the [MASK] is running", "[CLS] a photo of a dog [SEP]",
    "[[CLS]]", "[CLS", "CLS]", "[CLS]]", "[[SEP]", "[unused0]", "[unused1] word", "[UNK][UNK]",
    "##", "##ing", "a ##b", "[PAD] [PAD]", "[SEP][CLS]", "[MASK].", "[MASK]'s", "x[UNK]y",
    "[ＭASK]", "［MASK］", "[MASK\u200b]", "[\u200bMASK]", "[MAS\u0301K]", "［CLS］",
]

WEB = [
    "https://www.example.com/path?query=1&x=y#frag", "http://flickr.com/photos/123456",
    "www.google.com", "ftp://files.example.org/pub/file.tar.gz", "user@example.com",
    "first.last+tag@sub.domain.co.uk", "#dogs #cute #puppy", "#ThrowbackThursday", "@someone hi",
    "<b>bold</b>", "<img src=\"dog.jpg\">", "&amp; &lt; &gt;", "C:\\Users\\dog.jpg", "/usr/bin/env",
    "file_name_v2.final.JPG", "IMG_1234.jpeg", "1000268201_693b08cb0e.jpg#0", "key=value; k2=v2",
    "{\"json\": true}", "a/b/c/d", "snake_case.py", "foo::bar()", "x => y", "a != b", "i++",
    ":-) :( ;) :D xD <3", "¯\\_(ツ)_/¯", "(╯°□°)╯︵ ┻━┻", "lol!!!11", "sooooo cuuuute",
]


def long_words(rng):
    out = ["x" * 99, "x" * 100, "x" * 101, "a" * 150, "dog" * 33, "dog" * 34, "dog" * 34 + "g",
           "é" * 100, "é" * 101, "ж" * 100, "ж" * 101, "狗" * 120, "😀" * 101,
           "e\u0301" * 60, "Ⅻ" * 101, "a" * 100 + " dog", "dog " + "b" * 101 + " cat",
           "supercalifragilisticexpialidocious", "pneumonoultramicroscopicsilicovolcanoconiosis",
           "antidisestablishmentarianism", "Llanfairpwllgwyngyllgogerychwyrndrobwllllantysiliogogogoch",
           "hippopotomonstrosesquippedaliophobia", "a" * 100 + "." + "b" * 100]
    letters = "abcdefghijklmnopqrstuvwxyz"
    for n in (60, 99, 100, 101, 140, 300):
        out.append("".join(rng.choice(letters) for _ in range(n)))
    return out


def long_texts(rng, caps):
    out = []
    for k in range(30):
        out.append(" ".join(rng.choice(caps) for _ in range(8 + k)))
    out.append("dog " * 200)
    out.append("a " * 125 + "end")
    out.append("a " * 126 + "end")
    out.append("a " * 127 + "end")
    out.append("a " * 125 + "xyzzyplugh")          # truncation inside a multi-piece word
    out.append("a " * 124 + "unbelievably")
    out.append("a " * 125 + "[MASK] [MASK]")         # special tokens at the boundary
    out.append("a " * 126 + "[MASK]")
    out.append("! " * 200)
    out.append("狗" * 300)
    out.append("word, " * 100)
    out.append(("the quick brown fox jumps over the lazy dog. " * 20).strip())
    out.append("ÀÉÎÕÜ " * 60)
    out.append("😀 " * 200)
    return out


def fuzz(rng, n):
    """Random strings from a mix of code-point pools (every kind the pipeline treats specially)."""
    pools = [
        (0x20, 0x7E), (0x00, 0x1F), (0x80, 0xFF), (0x100, 0x24F), (0x300, 0x36F), (0x370, 0x3FF),
        (0x400, 0x4FF), (0x590, 0x6FF), (0x900, 0x97F), (0xE00, 0xE7F), (0x1100, 0x11FF),
        (0x1E00, 0x1FFF), (0x2000, 0x206F), (0x2070, 0x2BFF), (0x2E00, 0x2E7F), (0x3000, 0x30FF),
        (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xE000, 0xF8FF), (0xF900, 0xFAFF),
        (0xFB00, 0xFFFF), (0x10000, 0x1FFFF), (0x1F300, 0x1FAFF), (0x20000, 0x2FFFF),
        (0xE0000, 0xE01EF), (0x10FF00, 0x10FFFF),
    ]
    out = []
    for _ in range(n):
        chosen = [rng.choice(pools) for _ in range(rng.randint(1, 4))]
        chars = []
        for _ in range(rng.randint(1, 24)):
            lo, hi = rng.choice(chosen)
            c = rng.randint(lo, hi)
            if 0xD800 <= c <= 0xDFFF:
                c = 0x20
            chars.append(chr(c))
            if rng.random() < 0.2:
                chars.append(" ")
        out.append("".join(chars))
    return out


def build_cases():
    rng = random.Random(RNG_SEED)
    caps = captions(rng, 760)
    cats = [
        ("seed_labels", ["a photo of a dog", "a photo of a cat", "the photo of a human baby"]),
        ("captions", caps),
        ("punctuation", PUNCT),
        ("numbers", NUMBERS),
        ("accents", ACCENTS),
        ("mixed_case", MIXED_CASE),
        ("scripts", SCRIPTS),
        ("cjk", CJK),
        ("emoji", EMOJI),
        ("combining", COMBINING),
        ("control", CONTROL),
        ("whitespace", WHITESPACE),
        ("special_tokens", SPECIALS),
        ("web", WEB),
        ("long_words", long_words(rng)),
        ("long_texts", long_texts(rng, caps)),
        ("fuzz", fuzz(rng, 160)),
    ]
    seen = set()
    cases = []
    for cat, texts in cats:
        for t in texts:
            if t in seen:
                continue
            seen.add(t)
            cases.append((cat, t))
    return cases


# ---------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "tokens.json"))
    args = ap.parse_args()

    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import tokenizers
    import transformers
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(SEED_MODEL)
    assert tok.is_fast, "expected the fast (tokenizers-backed) tokenizer"
    pad_id = tok.convert_tokens_to_ids("[PAD]")

    cases = build_cases()
    texts = [t for _, t in cases]
    enc = tok(texts, padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    ids, mask, types = enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]
    assert ids.shape == (len(texts), MAX_LENGTH) and mask.shape == ids.shape and types.shape == ids.shape
    assert int(types.abs().sum()) == 0, "token_type_ids must all be 0"

    out_cases = []
    counts = {}
    for i, (cat, text) in enumerate(cases):
        n = int(mask[i].sum())
        row = ids[i].tolist()
        assert mask[i, :n].eq(1).all() and mask[i, n:].eq(0).all(), f"mask not a prefix of ones: {text!r}"
        assert all(x == pad_id for x in row[n:]), f"padding is not [PAD]: {text!r}"
        real = row[:n]
        assert real[0] == tok.cls_token_id and real[-1] == tok.sep_token_id and 2 <= n <= MAX_LENGTH
        # The same ids as a single, unpadded call.
        assert tok(text, truncation=True, max_length=MAX_LENGTH)["input_ids"] == real, text
        out_cases.append({"category": cat, "text": text, "ids": real})
        counts[cat] = counts.get(cat, 0) + 1

    doc = {
        "tokenizer": f"transformers {transformers.__version__} {type(tok).__name__} "
                     f"(fast, {type(tok).__mro__[1].__name__}, tokenizers {tokenizers.__version__})",
        "call": "tok(texts, padding='max_length', truncation=True, max_length=128, return_tensors='pt')",
        "max_length": MAX_LENGTH,
        "pad_id": pad_id,
        "categories": counts,
        "cases": out_cases,
    }
    # One case per line (ASCII-only JSON, so control and invisible characters stay readable).
    head = json.dumps({k: v for k, v in doc.items() if k != "cases"}, ensure_ascii=True)
    lines = [json.dumps(c, ensure_ascii=True, separators=(",", ":")) for c in out_cases]
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(head[:-1] + ',\n"cases":[\n' + ",\n".join(lines) + "\n]}\n")
    json.load(open(args.out))  # well-formed
    truncated = sum(1 for c in out_cases if len(c["ids"]) == MAX_LENGTH)
    print(f"{args.out}: {len(out_cases)} cases ({truncated} truncated), {os.path.getsize(args.out)} bytes")
    for k, v in counts.items():
        print(f"  {k:15s} {v}")


if __name__ == "__main__":
    main()
