"""Synthetic word lists for generated tweets (written for this project; no real tweets).

TOPIC_WORDS are the words typical test rules use; every generated text contains one to three
of them so that keyword rules match a fair share of the stream."""

from __future__ import annotations

TOPIC_WORDS: tuple[str, ...] = (
    "cat", "cats", "dog", "dogs", "coffee", "tea", "python", "rust", "news", "music",
    "weather", "football", "soccer", "bitcoin", "crypto", "ai", "climate", "election",
    "movie", "food", "travel", "sports", "tech", "science", "art", "books", "photo",
    "video", "space", "rain", "sunset", "pizza", "garden", "concert", "market", "kafka",
    "stream", "open", "source", "data",
)

FILLER_EN: tuple[str, ...] = (
    "the", "a", "today", "really", "just", "saw", "this", "is", "so", "my", "new", "best",
    "morning", "again", "never", "always", "thinking", "about", "with", "friends", "little",
    "big", "great", "amazing", "weird", "honestly", "love", "hate", "tomorrow", "finally",
    "everyone", "nobody", "check", "out", "thread", "quick", "update", "here", "there",
    "why", "how", "what", "people", "week", "night", "city", "home", "work", "time", "life",
)

# Short synthetic phrases per language, used whole so that scripts stay well-formed.
PHRASES: dict[str, tuple[str, ...]] = {
    "en": ("what a day", "can't believe it", "good vibes only", "see you soon", "no comment"),
    "es": ("qué día tan bonito", "mañana será mejor", "niño pequeño", "¡vamos!", "café con leche"),
    "fr": ("quelle journée", "à bientôt", "c'est génial", "été chaud", "déjà vu"),
    "de": ("schönen Tag noch", "Grüße aus Köln", "straße nass", "überall Regen", "genau so"),
    "pt": ("bom dia", "não acredito", "coração feliz", "ação rápida", "até logo"),
    "ar": ("صباح الخير", "القطط جميلة", "قهوة الصباح", "مرحبا بالجميع", "يوم سعيد"),
    "he": ("בוקר טוב", "חתול חמוד", "שבת שלום", "קפה של בוקר", "יום נפלא"),
    "ja": ("猫がかわいい", "今日はいい天気", "コーヒーを飲む", "おはようございます", "また明日"),
    "zh": ("我喜欢咖啡", "今天天气很好", "小猫很可爱", "早上好", "明天见"),
    "ko": ("고양이 귀여워", "안녕하세요", "좋은 아침", "커피 한 잔", "내일 봐요"),
    "hi": ("नमस्ते दोस्तों", "बिल्ली प्यारी है", "सुप्रभात", "चाय का समय", "फिर मिलेंगे"),
    "ru": ("доброе утро", "кошка спит", "хороший день", "кофе с молоком", "до завтра"),
    "tr": ("günaydın", "kedi çok tatlı", "iyi günler", "çay saati", "görüşürüz"),
}

LANG_WEIGHTS: tuple[tuple[str, int], ...] = (
    ("en", 50), ("es", 8), ("ja", 7), ("pt", 5), ("ar", 5), ("fr", 4), ("de", 3),
    ("he", 3), ("zh", 3), ("ko", 3), ("hi", 3), ("ru", 3), ("tr", 3),
)

EMOJI: tuple[str, ...] = (
    "😀", "🐱", "🐶", "☕", "🔥", "🚀", "❤️", "👍🏽", "🇺🇸", "🇯🇵", "👨‍👩‍👧", "🎉", "🌧️",
    "✨", "😂", "🙏🏾", "🤖", "📸", "⚽", "🍕",
)

# Combining characters and other awkward code points that a parser must pass through.
ODDITIES: tuple[str, ...] = ("e\u0301", "\u200b", "…", "“quoted”", "‘ok’", "—", "\u00a0", "ﬁ")

NAME_PARTS: tuple[str, ...] = (
    "Ada", "Lin", "Sam", "Noor", "Yuki", "Omar", "Lea", "Ravi", "Mia", "Jon", "Ines", "Kai",
    "Zoe", "Ali", "Eva", "Tom", "Aiko", "Luz", "Max", "Sara",
)
NAME_SUFFIXES: tuple[str, ...] = (
    "", " 🐱", " ✨", " (she/her)", " | dev", " محمد", " 山田", " ⚽", " שרה", " Ñúñez",
)

SOURCES: tuple[str, ...] = ("Twitter for iPhone", "Twitter for Android", "Twitter Web App")

CONTEXT_DOMAINS: tuple[tuple[str, str, str], ...] = (
    ("46", "Business Taxonomy", "Categories within Brand Verticals"),
    ("66", "Interests and Hobbies Category", "A grouping of interests and hobbies entities"),
    ("131", "Unified Twitter Taxonomy", "A taxonomy view into the Twitter interests graph"),
    ("65", "Interests and Hobbies Vertical", "Top level interests and hobbies groupings"),
)
