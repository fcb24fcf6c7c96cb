"""Synthetic Chinese e-commerce titles in the OA-Mine format, from a seed: the CJK fixture set.

No licence-clean real Chinese attribute dataset is known here, so this proves the path, not the quality:
brands (三只松鼠, 农夫山泉, 安踏 ...), product nouns per category, net contents in 克/千克/斤/毫升/升 and in
g/ml/L (sometimes in full-width digits, ``７５０ｇ``), packs in 包/条/盒/瓶/袋/卷, colours and sizes, glued
together as Chinese titles are: with and without spaces, 【】 brackets, ×/*// between content and pack.
Every labelled value is a verbatim substring of its title, so ``enrich train`` reads the file as it is.

``python -m devtools.harness.chinese OUT.jsonl --count 600 --seed 1`` writes a file; the same seed writes
the same bytes.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from training.data import Offer, write_offers

__all__ = ["CHINESE_CATEGORIES", "generate_chinese_offers", "main"]

_FULL_WIDTH = str.maketrans("0123456789.gmlLkKG", "０１２３４５６７８９．ｇｍｌＬｋＫＧ")

# (number, unit) choices per kind of net content; a number is written as given
_CONTENTS: dict[str, list[tuple[list[str], list[str]]]] = {
    "weight": [
        (["100", "200", "250", "500", "750", "1000"], ["g", "克"]),
        (["1", "1.5", "2", "2.5"], ["kg", "千克", "公斤"]),
        (["1", "2", "3", "5"], ["斤"]),
    ],
    "volume": [
        (["250", "330", "500", "550", "1500"], ["ml", "毫升", "mL", "ML"]),
        (["1", "1.5", "2", "5"], ["L", "升"]),
    ],
}

# category -> (attribute -> values, or a net-content kind; product nouns; title templates)
CHINESE_CATEGORIES: dict[str, tuple[dict[str, list[str] | str], list[str], list[str]]] = {
    "零食坚果": (
        {
            "Brand": ["三只松鼠", "良品铺子", "百草味", "来伊份", "洽洽", "沃隆"],
            "Flavor": ["原味", "五香", "奶油味", "蜂蜜味", "椒盐"],
            "Net content": "weight",
            "Pack size": ["30包", "20袋", "6盒", "10袋", "15包"],
        },
        ["每日坚果", "混合果仁", "夏威夷果", "碧根果", "瓜子", "开心果"],
        [
            "{Brand} {Product} {Net content}/{Pack size} {Flavor}",
            "【{Brand}】{Flavor}{Product}{Net content}×{Pack size}休闲零食",
            "{Brand}{Product} {Flavor} {Net content}*{Pack size} 年货礼盒",
            "{Brand} {Flavor}{Product} {Net content} 办公室零食",
        ],
    ),
    "饮料乳品": (
        {
            "Brand": ["农夫山泉", "伊利", "蒙牛", "怡宝", "康师傅", "光明"],
            "Net content": "volume",
            "Pack size": ["24瓶", "12盒", "6瓶", "16袋", "12瓶", "10盒"],
        },
        ["天然水", "纯牛奶", "酸奶", "绿茶", "冰红茶", "矿泉水", "饮用水"],
        [
            "{Brand} {Product} {Net content}*{Pack size} 整箱装",
            "{Brand}{Product}{Net content}×{Pack size}",
            "【{Brand}】{Product} {Net content} {Pack size}/箱 家庭装",
            "{Brand} {Product} {Net content}",
        ],
    ),
    "运动鞋服": (
        {
            "Brand": ["安踏", "李宁", "特步", "361度", "鸿星尔克", "匹克"],
            "Color": ["红色", "黑色", "白色", "蓝色", "灰色", "粉色", "黑白"],
            "Size": ["42码", "39码", "40码", "44码", "XL", "XXL", "M", "L"],
        },
        ["跑步鞋", "篮球鞋", "运动T恤", "卫衣", "运动裤", "休闲鞋"],
        [
            "{Brand} {Product} 男女同款 {Color} {Size}",
            "{Brand}{Product}{Color} {Size} 2024新款",
            "【{Brand}】{Color}{Product} 尺码{Size} 透气",
            "{Brand} 官方旗舰 {Product} {Color}",
        ],
    ),
    "日用纸品": (
        {
            "Brand": ["维达", "清风", "心相印", "洁柔", "得宝"],
            "Pack size": ["24包", "10卷", "3条", "18包", "6包", "12卷"],
            "Ply": ["3层", "4层", "5层"],
        },
        ["抽纸", "卷纸", "湿巾", "面巾纸", "厨房纸"],
        [
            "{Brand} {Product} {Ply} {Pack size} 整箱",
            "{Brand}{Product}{Ply}{Pack size}家用实惠装",
            "【{Brand}】{Product} {Pack size} {Ply}加厚",
        ],
    ),
}


def _net_content(rng: random.Random, kind: str) -> str:
    numbers, units = rng.choice(_CONTENTS[kind])
    text = rng.choice(numbers) + rng.choice(units)
    return text.translate(_FULL_WIDTH) if rng.random() < 0.15 else text  # 全角 as some sellers type it


def generate_chinese_offers(count: int = 600, seed: int = 1) -> list[Offer]:
    """``count`` distinct offers spread evenly over :data:`CHINESE_CATEGORIES`, deterministic for a seed."""
    rng = random.Random(seed)
    names = sorted(CHINESE_CATEGORIES)
    offers: dict[str, Offer] = {}
    index = 0
    while len(offers) < count:
        category = names[index % len(names)]
        index += 1
        vocab, products, templates = CHINESE_CATEGORIES[category]
        choice = {
            name: _net_content(rng, values) if isinstance(values, str) else rng.choice(values)
            for name, values in vocab.items()
        }
        template = rng.choice(templates)
        text = template.format(Product=rng.choice(products), **choice)
        values = tuple((name, value) for name, value in choice.items() if "{" + name + "}" in template)
        offers.setdefault(text, Offer(text=text, category=category, values=values))
    return list(offers.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write synthetic Chinese OA-Mine-format offers")
    parser.add_argument("out", type=Path, help="output JSON-lines file")
    parser.add_argument("--count", type=int, default=600, help="number of distinct offers")
    parser.add_argument("--seed", type=int, default=1, help="random seed")
    args = parser.parse_args(argv)
    write_offers(args.out, generate_chinese_offers(args.count, args.seed))
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
