"""A restricted LaTeX expression parser that builds sympy objects by constructor calls only.

Model text is never handed to `eval`, `sympify` or `parse_expr`: a hand-written recursive-descent
parser reads a normalised answer (latex_normalize.py) in a small grammar and calls sympy
constructors. Anything outside the grammar raises `ParseError` (the caller then tries other checks).

Grammar (implicit multiplication between adjacent factors, as LaTeX writes `2\\pi r`):

    sum     := term (('+' | '-') term)*
    term    := unary (('*' | '\\cdot' | '\\times' | '/' | '\\div') unary | implicit unary)*
    unary   := ('-' | '+') unary | power
    power   := postfix ('^' group)?
    postfix := atom '!'*
    atom    := number | letter ('_' group)? | '(' sum ')' | '{' sum '}' | '|' sum '|'
             | \\frac g g | \\sqrt ('[' sum ']')? g | \\binom g g | \\pi | \\infty | \\greek
             | \\sin ... \\ln \\log ('_' g)? ('^' g)? argument

`e` reads as Euler's number and `i` as the imaginary unit. Size guards raise `TooLargeError`
before sympy is asked for an exact value that would not fit in memory (`9^{9^{9^{9}}}`,
`1000000!`), so the caller can skip every other symbolic check on such input.
"""

import dataclasses
import math
import re

import sympy

MAX_TOKENS = 400
MAX_DEPTH = 60
MAX_LITERAL_DIGITS = 100
# An exact power / factorial / binomial whose value needs more bits than this is refused.
MAX_EXACT_BITS = 20_000
MAX_FACTORIAL = 1000


class ParseError(ValueError):
    """The text is outside the restricted grammar."""


class TooLargeError(ParseError):
    """The text denotes a number too large to compute exactly (a pathological answer)."""


@dataclasses.dataclass(frozen=True)
class Parsed:
    """A parsed answer.

    Attributes:
      expr: the sympy expression.
      has_decimal: True when a decimal literal (`0.33`) occurs; such answers are compared with a
        relative tolerance, exact ones (integers, fractions, radicals, pi) exactly.
    """

    expr: sympy.Basic
    has_decimal: bool


_TOKEN = re.compile(
    r"\s*(?:(?P<number>\d+\.\d*|\.\d+|\d+)|(?P<command>\\[A-Za-z]+|\\[{}|])|(?P<char>\S))"
)
_GREEK = frozenset(
    [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "epsilon",
        "varepsilon",
        "zeta",
        "eta",
        "theta",
        "vartheta",
        "iota",
        "kappa",
        "lambda",
        "mu",
        "nu",
        "xi",
        "rho",
        "sigma",
        "tau",
        "upsilon",
        "phi",
        "varphi",
        "chi",
        "psi",
        "omega",
        "Gamma",
        "Delta",
        "Theta",
        "Lambda",
        "Xi",
        "Sigma",
        "Phi",
        "Psi",
        "Omega",
    ]
)
_FUNCTIONS = {
    "sin": sympy.sin,
    "cos": sympy.cos,
    "tan": sympy.tan,
    "cot": sympy.cot,
    "sec": sympy.sec,
    "csc": sympy.csc,
    "arcsin": sympy.asin,
    "arccos": sympy.acos,
    "arctan": sympy.atan,
    "sinh": sympy.sinh,
    "cosh": sympy.cosh,
    "tanh": sympy.tanh,
    "exp": sympy.exp,
    "ln": sympy.log,
    "log": sympy.log,
}
_MUL_OPS = frozenset({"*", "\\cdot", "\\times"})
_DIV_OPS = frozenset({"/", "\\div"})
_ABS_BARS = frozenset({"|", "\\vert", "\\lvert", "\\rvert", "\\mid"})


def _tokenize(text: str) -> list[str]:
    tokens: list[str] = []
    pos = 0
    n = len(text)
    while pos < n:
        m = _TOKEN.match(text, pos)
        if m is None:
            break  # only trailing whitespace is left
        tok = m.group("number") or m.group("command") or m.group("char")
        tokens.append("|" if tok in _ABS_BARS else tok)
        if len(tokens) > MAX_TOKENS:
            raise ParseError(f"more than {MAX_TOKENS} tokens")
        pos = m.end()
    return tokens


def _bits(value: sympy.Basic) -> float:
    """Rough bit size of an exact number (log2 of its magnitude, numerator and denominator)."""
    if value.is_Rational:
        return max(abs(value.p), abs(value.q)).bit_length()
    try:
        magnitude = abs(complex(value))
    except (TypeError, ValueError, OverflowError):
        return math.inf
    if magnitude == 0:
        return 0.0
    return abs(math.log2(magnitude)) + 1.0


def _safe_pow(base: sympy.Basic, exponent: sympy.Basic) -> sympy.Basic:
    if exponent.is_number and base.is_number and not base.has(sympy.oo, sympy.zoo):
        try:
            exp_magnitude = abs(complex(exponent))
        except (TypeError, ValueError, OverflowError) as err:
            raise TooLargeError("exponent not a finite number") from err
        trivial_base = base in (sympy.Integer(0), sympy.Integer(1), sympy.Integer(-1))
        bits = exp_magnitude * max(_bits(base), 1.0)
        if exp_magnitude > 1 and bits > MAX_EXACT_BITS and not trivial_base:
            raise TooLargeError("power too large to evaluate exactly")
    return sympy.Pow(base, exponent)


def _checked_integer(value: sympy.Basic, limit: int, what: str) -> int:
    if not value.is_Integer or value < 0:
        raise ParseError(f"{what} of a non-natural number")
    if value > limit:
        raise TooLargeError(f"{what} too large")
    return int(value)


class _Parser:
    def __init__(self, tokens: list[str]):
        self.tokens = tokens
        self.pos = 0
        self.depth = 0
        self.abs_depth = 0
        self.has_decimal = False

    # -- token helpers ------------------------------------------------------------------------
    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def next(self) -> str:
        tok = self.peek()
        if tok is None:
            raise ParseError("unexpected end of expression")
        self.pos += 1
        return tok

    def expect(self, tok: str) -> None:
        got = self.next()
        if got != tok:
            raise ParseError(f"expected {tok!r}, got {got!r}")

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ParseError(f"nesting deeper than {MAX_DEPTH}")

    # -- grammar ------------------------------------------------------------------------------
    def parse(self) -> sympy.Basic:
        expr = self.sum()
        if self.peek() is not None:
            raise ParseError(f"unexpected token {self.peek()!r}")
        return expr

    def sum(self) -> sympy.Basic:
        self.enter()
        expr = self.term()
        while self.peek() in ("+", "-"):
            op = self.next()
            rhs = self.term()
            expr = sympy.Add(expr, rhs if op == "+" else -rhs)
        self.depth -= 1
        return expr

    def starts_atom(self, tok: str | None) -> bool:
        if tok is None:
            return False
        if tok[0].isdigit() or tok[0] == "." or tok.isalpha() or tok in ("(", "{"):
            return True
        if tok == "|":
            return self.abs_depth == 0
        if tok.startswith("\\") and len(tok) > 2:
            name = tok[1:]
            return (
                name in _GREEK
                or name in _FUNCTIONS
                or name in ("frac", "sqrt", "binom", "pi", "infty")
            )
        return False

    def term(self) -> sympy.Basic:
        expr = self.unary()
        while True:
            tok = self.peek()
            if tok in _MUL_OPS:
                self.next()
                expr = sympy.Mul(expr, self.unary())
            elif tok in _DIV_OPS:
                self.next()
                divisor = self.unary()
                if divisor == 0:
                    raise ParseError("division by zero")
                expr = sympy.Mul(expr, sympy.Pow(divisor, -1))
            elif self.starts_atom(tok):
                expr = sympy.Mul(expr, self.power())
            else:
                return expr

    def unary(self) -> sympy.Basic:
        tok = self.peek()
        if tok in ("-", "+"):
            self.next()
            self.enter()
            operand = self.unary()
            self.depth -= 1
            return -operand if tok == "-" else operand
        return self.power()

    def power(self) -> sympy.Basic:
        base = self.postfix()
        if self.peek() == "^":
            self.next()
            return _safe_pow(base, self.group())
        return base

    def postfix(self) -> sympy.Basic:
        expr = self.atom()
        while self.peek() == "!":
            self.next()
            expr = sympy.factorial(_checked_integer(expr, MAX_FACTORIAL, "factorial"))
        return expr

    def group(self) -> sympy.Basic:
        """A braced group, or a single token as LaTeX reads `x^2` / `\\frac12`."""
        tok = self.peek()
        if tok == "{":
            self.next()
            expr = self.sum()
            self.expect("}")
            return expr
        if tok is not None and tok[0].isdigit() and len(tok) > 1:
            # `x^23` is x^{2}*3 in LaTeX: split the literal and keep its tail for later.
            self.tokens[self.pos] = tok[1:]
            return sympy.Integer(int(tok[0]))
        return self.atom()

    def atom(self) -> sympy.Basic:
        self.enter()
        tok = self.next()
        expr = self._atom(tok)
        self.depth -= 1
        return expr

    def _atom(self, tok: str) -> sympy.Basic:
        if tok[0].isdigit() or tok[0] == ".":
            return self.number(tok)
        if tok in ("(", "{"):
            expr = self.sum()
            self.expect(")" if tok == "(" else "}")
            return expr
        if tok == "|":
            self.abs_depth += 1
            expr = self.sum()
            self.expect("|")
            self.abs_depth -= 1
            return sympy.Abs(expr)
        if len(tok) == 1 and tok.isalpha():
            return self.letter(tok)
        if tok.startswith("\\"):
            return self.command(tok[1:])
        raise ParseError(f"unexpected token {tok!r}")

    def number(self, tok: str) -> sympy.Basic:
        whole, _, frac = tok.partition(".")
        if len(whole) + len(frac) > MAX_LITERAL_DIGITS:
            raise TooLargeError("numeric literal too long")
        if "." in tok:
            self.has_decimal = True
            digits = (whole or "0") + frac
            return sympy.Rational(int(digits), 10 ** len(frac))
        return sympy.Integer(int(whole))

    def letter(self, tok: str) -> sympy.Basic:
        if self.peek() == "_":
            self.next()
            return sympy.Symbol(f"{tok}_{self.subscript()}")
        if tok == "e":
            return sympy.E
        if tok == "i":
            return sympy.I
        return sympy.Symbol(tok)

    def subscript(self) -> str:
        tok = self.next()
        if tok != "{":
            if not tok.isalnum():
                raise ParseError(f"bad subscript {tok!r}")
            return tok
        parts = []
        while self.peek() != "}":
            part = self.next()
            if not part.isalnum():
                raise ParseError(f"bad subscript {part!r}")
            parts.append(part)
        self.next()
        return "".join(parts)

    def command(self, name: str) -> sympy.Basic:
        if name == "frac":
            numerator = self.group()
            denominator = self.group()
            if denominator == 0:
                raise ParseError("division by zero")
            return sympy.Mul(numerator, sympy.Pow(denominator, -1))
        if name == "sqrt":
            index = None
            if self.peek() == "[":
                self.next()
                index = self.sum()
                self.expect("]")
            radicand = self.group()
            if index is None:
                return sympy.sqrt(radicand)
            if index == 0:
                raise ParseError("zeroth root")
            return _safe_pow(radicand, sympy.Pow(index, -1))
        if name == "binom":
            n = _checked_integer(self.group(), 10_000, "binomial")
            k = _checked_integer(self.group(), 10_000, "binomial")
            return sympy.binomial(n, k)
        if name == "pi":
            return sympy.pi
        if name == "infty":
            return sympy.oo
        if name in _GREEK:
            return sympy.Symbol(name)
        if name in _FUNCTIONS:
            return self.function(name)
        raise ParseError(f"unsupported command \\{name}")

    def function(self, name: str) -> sympy.Basic:
        log_base = None
        if name == "log" and self.peek() == "_":
            self.next()
            log_base = self.group()
        power = None
        if self.peek() == "^":
            self.next()
            power = self.group()
        if self.peek() == "(":
            self.next()
            argument = self.sum()
            self.expect(")")
        else:
            argument = self.power()
        if log_base is not None:
            value = sympy.log(argument, log_base)
        else:
            value = _FUNCTIONS[name](argument)
        return value if power is None else _safe_pow(value, power)


def parse_expression(text: str) -> Parsed:
    """Parses a normalised answer into a sympy expression.

    Raises:
      ParseError: outside the grammar (also for `=`, `,`, relations, text).
      TooLargeError: a number too large to evaluate exactly.
    """
    tokens = _tokenize(text)
    if not tokens:
        raise ParseError("empty expression")
    parser = _Parser(tokens)
    expr = parser.parse()
    if expr.has(sympy.nan, sympy.zoo):
        raise ParseError("undefined value")
    return Parsed(expr=expr, has_decimal=parser.has_decimal)
