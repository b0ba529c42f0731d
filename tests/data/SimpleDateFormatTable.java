// Writes simpledateformat.tsv: what java.text.SimpleDateFormat (Locale.US, UTC) prints
// for each pattern and instant. The connector's DatePattern tests compare against it.
// Regenerate with: java tests/data/SimpleDateFormatTable.java > tests/data/simpledateformat.tsv
import java.text.SimpleDateFormat;
import java.util.Locale;
import java.util.TimeZone;

public class SimpleDateFormatTable {
    public static void main(String[] args) {
        long[] instants = {
            0L,                      // 1970-01-01T00:00:00.000Z, a Thursday
            1101902400000L,          // 2004-12-01T12:00:00.000Z, the contract's example
            951868799999L,           // 2000-02-29T23:59:59.999Z, leap day
            1104451200007L,          // 2004-12-31T00:00:00.007Z, week 1 of the next year
            1609459200000L,          // 2021-01-01T00:00:00.000Z, a Friday
            1609632000000L,          // 2021-01-03T00:00:00.000Z, a Sunday: week 2
            1609027200000L,          // 2020-12-27T00:00:00.000Z
            1688475909045L,          // 2023-07-04T13:05:09.045Z
            1262476800000L,          // 2010-01-03T00:00:00.000Z
            946684799000L,           // 1999-12-31T23:59:59.000Z
            2147483647000L,          // 2038-01-19T03:14:07.000Z
            1718411400500L,          // 2024-06-15T00:30:00.500Z
            1725896747277L,          // 2024-09-09T15:45:47.277Z
            1735689599999L,          // 2024-12-31T23:59:59.999Z
            -86400000L,              // 1969-12-31T00:00:00.000Z
        };
        String[] patterns = {
            "y", "yy", "yyy", "yyyy", "yyyyy",
            "M", "MM", "MMM", "MMMM", "MMMMM",
            "d", "dd", "ddd",
            "H", "HH", "k", "kk", "K", "KK", "h", "hh",
            "m", "mm", "s", "ss",
            "S", "SS", "SSS", "SSSS",
            "E", "EE", "EEE", "EEEE", "EEEEE",
            "a", "aa", "aaa",
            "D", "DD", "DDD",
            "w", "ww", "u", "uu",
            "z", "zz", "zzz", "zzzz",
            "Z", "ZZ", "ZZZZ",
            "X", "XX", "XXX",
            "yyyy/MM", "yyyy/MM/dd", "yyyyMMddHHmmss", "yyyy-MM-dd", "HH:mm:ss.SSS",
            "yyyy.MM.dd 'at' HH:mm:ss z",
            "EEE, MMM d, ''yy",
            "h:mm a",
            "hh 'o''clock' a, zzzz",
            "K:mm a, z",
            "yyyyy.MMMMM.dd hh:mm aaa",
            "EEE, d MMM yyyy HH:mm:ss Z",
            "yyMMddHHmmssZ",
            "yyyy-MM-dd'T'HH:mm:ss.SSSZ",
            "yyyy-MM-dd'T'HH:mm:ss.SSSXXX",
            "'week' w 'day' D u",
            "''",
            "''''",
            "'quoted ''text'' here'",
            "yyyy'T'",
            "'y'yyyy",
            "-_.,;:!@#$%^&*()[]{}+=~ 0123",
            "dd-MM-yyyy_HH-mm",
            "EEEE d MMMM yyyy",
            "hh:mm:ss a",
            "kk:mm KK:mm",
        };
        StringBuilder out = new StringBuilder();
        out.append("# millis\tpattern\tjava.text.SimpleDateFormat output (Locale.US, UTC), made by SimpleDateFormatTable.java\n");
        for (String p : patterns) {
            SimpleDateFormat f = new SimpleDateFormat(p, Locale.US);
            f.setTimeZone(TimeZone.getTimeZone("UTC"));
            for (long t : instants) {
                out.append(t).append('\t').append(p).append('\t').append(f.format(new java.util.Date(t))).append('\n');
            }
        }
        System.out.print(out);
    }
}
